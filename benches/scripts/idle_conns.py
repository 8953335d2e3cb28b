"""Server RSS per idle connection: open N connections to a server (optionally making calls
on each first), wait, and print the growth of the server's resident memory per connection.

    benches/scripts/idle-conns.sh BENCH [N] [MODE] [WAIT_SECS]

MODE: idle (connect only), call (one `add` each), burst (200 pipelined `add`s each). Run by
idle-conns.sh, which starts the server (`bench server --system ours`) and a Python with msgpack.
"""
import socket, sys, time, msgpack, os, resource
pid, port, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
call = mode != "idle"
k = 200 if mode == "burst" else 1
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
base = rss()
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port)); socks.append(s)
    if call:
        s.sendall(b"".join(msgpack.packb([0, j, "add", [1, 2]]) for j in range(k)))
for s in socks if call else []:
    u = msgpack.Unpacker(raw=False)
    got = 0
    while got < k:
        u.feed(s.recv(65536))
        for r in u:
            assert r[3] == 3, r
            got += 1
time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 2)
after = rss()
print(f"n={n} mode={mode} base={base}KiB after={after}KiB per_conn={(after-base)*1024/n:.0f}B")
