#!/usr/bin/env python3
"""A MessagePack-RPC client built from a socket and the stock PyPI `msgpack` only.

It checks that a server speaks plain MessagePack-RPC as third-party peers do:

- a notification whose method name is msgpack *bin* (as pynvim sends on connect) is
  ignored: no reply, no error, the connection stays usable;
- add(2, 3) == 5;
- echo of a 10-byte and a 100 KiB bin comes back unchanged (the big reply is read in
  4 KiB chunks: a regression test for clients that hang once a reply crosses their read
  buffer);
- an unknown method answers an error shaped [code, message] with code 1;
- msgid 2**64 - 2 is echoed unchanged;
- 50 requests pipelined in one send are all answered, matched by msgid.

Every message from the server must be a 4-element response: a server must not send
notifications or anything else to a client that did not ask for them.

Usage: client.py --addr HOST:PORT|unix:PATH [--tls-ca FILE [--tls-server-name NAME]]
                 [--timeout SECONDS]

--addr unix:PATH connects over a Unix-domain socket (socket.AF_UNIX); --tls-ca FILE
speaks TLS with the standard `ssl` module, trusting that CA (the server name defaults to
the host of --addr).

Prints OK and exits 0, or prints the failure to stderr and exits 1.
"""

import argparse
import socket
import ssl
import sys

import msgpack

READ_CHUNK = 4096


class Failure(Exception):
    pass


class Conn:
    def __init__(self, addr, timeout, tls_ca=None, server_name=None):
        if addr.startswith("unix:"):
            if tls_ca:
                raise Failure("TLS over a Unix socket is not served")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(addr[len("unix:"):])
        else:
            host, _, port = addr.rpartition(":")
            host = host.strip("[]")
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls_ca:
                ctx = ssl.create_default_context(cafile=tls_ca)
                self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name or host)
        self.packer = msgpack.Packer(use_bin_type=True)
        # raw=False: str -> str, bin -> bytes, so the two stay distinguishable.
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * 1024 * 1024)
        # Msgids sent and not answered yet.
        self.outstanding = set()
        # Replies that arrived while waiting for another msgid.
        self.early = {}

    def send(self, *messages):
        for m in messages:
            if m[0] == 0:
                self.outstanding.add(m[1])
        self.sock.sendall(b"".join(self.packer.pack(m) for m in messages))

    def next_message(self):
        while True:
            for msg in self.unpacker:
                return msg
            try:
                chunk = self.sock.recv(READ_CHUNK)
            except socket.timeout:
                raise Failure("timed out waiting for a reply") from None
            if not chunk:
                raise Failure("the server closed the connection")
            self.unpacker.feed(chunk)

    def reply(self, msgid):
        """The (error, result) of the response to `msgid`."""
        while msgid not in self.early:
            msg = self.next_message()
            if not (isinstance(msg, list) and len(msg) == 4 and msg[0] == 1):
                raise Failure(f"expected a 4-element response [1, msgid, error, result], got {short(msg)}")
            _, got, error, result = msg
            if not isinstance(got, int) or got < 0:
                raise Failure(f"response msgid is not an unsigned integer: {got!r}")
            if got not in self.outstanding:
                raise Failure(
                    f"response with msgid {got}, which matches no request in flight "
                    f"(truncated msgid, a duplicate, or a reply to a notification?): {short(msg)}"
                )
            self.outstanding.discard(got)
            self.early[got] = (error, result)
        return self.early.pop(msgid)

    def call(self, msgid, method, params):
        self.send([0, msgid, method, params])
        return self.reply(msgid)


def short(v, n=200):
    s = repr(v)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def expect_ok(what, outcome, want):
    error, result = outcome
    if error is not None:
        raise Failure(f"{what}: unexpected error {short(error)}")
    if result != want or type(result) is not type(want):
        raise Failure(f"{what}: expected {short(want)} ({type(want).__name__}), got {short(result)} ({type(result).__name__})")


def run(addr, timeout, tls_ca=None, server_name=None):
    c = Conn(addr, timeout, tls_ca, server_name)

    # pynvim's first message: a notification with a bin method name. It must be ignored;
    # any reply to it fails the first `reply` below.
    c.send([2, b"nvim_set_client_info", ["python-client", {"major": 0}, "remote", {}, {}]])

    expect_ok("add(2, 3)", c.call(1, "add", [2, 3]), 5)

    small = bytes(range(10))
    expect_ok("echo(10 bytes)", c.call(2, "echo", [small]), small)

    big = bytes(i * 7 % 251 for i in range(100 * 1024))
    expect_ok("echo(100 KiB)", c.call(3, "echo", [big]), big)

    error, result = c.call(4, "no_such_method_xyz", [1])
    if not (isinstance(error, list) and len(error) == 2):
        raise Failure(f"unknown method: expected an error [code, message], got {short(error)}")
    code, message = error
    if code != 1 or not isinstance(message, str) or not message:
        raise Failure(f"unknown method: expected [1, <message>], got {short(error)}")
    if result is not None:
        raise Failure(f"unknown method: result must be nil with an error, got {short(result)}")

    big_id = 2**64 - 2
    expect_ok("add with msgid 2**64-2", c.call(big_id, "add", [40, 2]), 42)

    # 50 requests in one send; replies may come in any order.
    ids = list(range(1000, 1050))
    c.send(*([0, i, "add", [i, 1]] for i in ids))
    for i in ids:
        expect_ok(f"pipelined add msgid {i}", c.reply(i), i + 1)

    # The connection still works and nothing extra was sent (e.g. a late reply to the
    # notification) before this last reply.
    expect_ok("add after pipelining", c.call(5, "add", [-7, 7]), 0)
    if c.early:
        raise Failure(f"unexpected extra responses: {sorted(c.early)}")
    c.sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT of the server, or unix:PATH")
    ap.add_argument("--tls-ca", help="speak TLS, trusting this CA (PEM)")
    ap.add_argument("--tls-server-name", help="with --tls-ca: the name the certificate must be valid for")
    ap.add_argument("--timeout", type=float, default=20.0, help="per-read timeout in seconds")
    args = ap.parse_args()
    try:
        run(args.addr, args.timeout, args.tls_ca, args.tls_server_name)
    except (Failure, OSError, ValueError, msgpack.UnpackException) as e:
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
