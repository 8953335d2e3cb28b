#!/usr/bin/env python3
"""A small spec-compliant MessagePack-RPC server: a socket, selectors and the stock PyPI
`msgpack`, nothing else.

Serves:
  add(a, b) -> a + b
  echo(x)   -> x, unchanged (bin stays bin, str stays str)
  fail()    -> error [3, "boom"]
Any other method gets the error [1, "method not found: NAME"]; a malformed request whose
msgid can be read gets [2, "..."]. Notifications are ignored. Method names may be str or
bin. Replies keep the request's msgid unchanged, whatever its size.

Listens on 127.0.0.1, port 0 unless --port is given, and prints the port alone on the
first line of stdout. Exits when stdin reaches EOF (so a parent that dies takes it along)
or after --idle seconds (default 60) with no connection activity.
"""

import argparse
import os
import selectors
import socket
import sys
import time

import msgpack

MAX_BUFFER = 64 * 1024 * 1024


class MethodError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def add(a, b):
    return a + b


def echo(x):
    return x


def fail():
    raise MethodError(3, "boom")


METHODS = {"add": add, "echo": echo, "fail": fail}


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_BUFFER)
        self.packer = msgpack.Packer(use_bin_type=True)
        self.out = bytearray()

    def respond(self, msgid, error, result):
        try:
            self.out += self.packer.pack([1, msgid, error, result])
        except (OverflowError, TypeError, ValueError) as e:
            self.out += self.packer.pack([1, msgid, [10, f"result could not be encoded: {e}"], None])

    def handle(self, msg):
        if not isinstance(msg, (list, tuple)) or not msg:
            return
        kind = msg[0]
        if kind == 2:
            return  # Notifications: nothing we serve needs them; never answered.
        if kind != 0:
            return  # Responses (we send no requests) and unknown types: ignored.
        if len(msg) != 4 or not isinstance(msg[1], int) or msg[1] < 0:
            if len(msg) >= 2 and isinstance(msg[1], int) and msg[1] >= 0:
                self.respond(msg[1], [2, "malformed request"], None)
            return
        _, msgid, method, params = msg
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        if not isinstance(method, str) or not isinstance(params, (list, tuple)):
            self.respond(msgid, [2, "method must be str or bin, params an array"], None)
            return
        fn = METHODS.get(method)
        if fn is None:
            self.respond(msgid, [1, f"method not found: {method}"], None)
            return
        try:
            result = fn(*params)
        except MethodError as e:
            self.respond(msgid, [e.code, e.message], None)
        except TypeError as e:
            self.respond(msgid, [2, f"invalid params: {e}"], None)
        except Exception as e:  # noqa: BLE001 - a handler bug must not kill the server
            self.respond(msgid, [3, f"{type(e).__name__}: {e}"], None)
        else:
            self.respond(msgid, None, result)


def serve(listener, idle):
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, "listen")
    stdin_fd = sys.stdin.fileno()
    try:
        sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
    except (OSError, ValueError):
        # A regular file or /dev/null cannot be polled: rely on the idle timeout alone.
        pass
    last = time.monotonic()

    def close(c):
        sel.unregister(c.sock)
        c.sock.close()

    while True:
        left = last + idle - time.monotonic()
        if left <= 0:
            print("spec_server: idle timeout; exiting", file=sys.stderr)
            return
        events = sel.select(timeout=left)
        if events:
            last = time.monotonic()
        for key, mask in events:
            what = key.data
            if what == "stdin":
                if not os.read(stdin_fd, 4096):
                    return
            elif what == "listen":
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(sock, selectors.EVENT_READ, Client(sock))
            else:
                c = what
                if mask & selectors.EVENT_READ:
                    try:
                        data = c.sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        close(c)
                        continue
                    if data == b"":
                        close(c)
                        continue
                    if data:
                        try:
                            c.unpacker.feed(data)
                            for msg in c.unpacker:
                                c.handle(msg)
                        except (ValueError, msgpack.UnpackException) as e:
                            print(f"spec_server: bad stream, closing: {e}", file=sys.stderr)
                            close(c)
                            continue
                if c.out:
                    try:
                        n = c.sock.send(c.out)
                        del c.out[:n]
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        close(c)
                        continue
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
                if want != key.events:
                    sel.modify(c.sock, want, c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--idle", type=float, default=60.0, help="exit after this many idle seconds")
    args = ap.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    try:
        serve(listener, args.idle)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
