"""A stateful HTTP service that takes part in migration through PaCI (standard library only).

    GET /incr/NAME   adds one to counter NAME and answers its new value
    GET /get/NAME    answers counter NAME
    GET /healthz     ok

The counters live only in memory. When the platform migrates the instance, it hands them over:
on `migrate` it stops changing them (requests wait), answers with them as its state, and from
then on forwards every request to its successor; the successor loads them on `restore`. It
reports its load every second and answers `drain` at once.

    python3 counter.py [PORT [BALLAST_MIB]]

PORT may be a path: the service then listens on a Unix socket there (so that CRIU, whose 4.1
cannot dump TCP sockets on kernels from 6.16 on, can checkpoint it as a peer in the benchmark).

Outside Paracloud (no PARACLOUD_PACI) it serves without PaCI. BALLAST_MIB holds that much memory
touched, to weigh the process for a checkpoint.
"""

import http.client
import http.server
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paci import Paci  # noqa: E402

counters = {}
lock = threading.Condition()
mode = {"state": "serving", "to": None}
in_flight = [0]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm holds the body
    # until the peer's delayed acknowledgement (40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, "ok\n")
        with lock:
            in_flight[0] += 1
            # Frozen while the state is being handed over: wait for the successor to have it.
            while mode["state"] == "frozen":
                lock.wait()
            forward_to = mode["to"] if mode["state"] == "forwarding" else None
            if forward_to is None:
                status, text = self.apply()
        if forward_to is not None:
            status, text = self.forward(forward_to)
        with lock:
            in_flight[0] -= 1
        self.answer(status, text)

    def apply(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "incr":
            counters[parts[1]] = counters.get(parts[1], 0) + 1
            return 200, f"{counters[parts[1]]}\n"
        if len(parts) == 2 and parts[0] == "get":
            return 200, f"{counters.get(parts[1], 0)}\n"
        return 404, "use /incr/NAME or /get/NAME\n"

    def forward(self, address):
        connection = http.client.HTTPConnection(address, port, timeout=10)
        connection.request("GET", self.path)
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        return response.status, text


def follow_events(paci):
    for event in paci.events():
        kind = event["kind"]
        if kind == "migrate":
            with lock:
                mode["state"] = "frozen"
                pending_target[0] = event["to"]["address"]
                state = dict(counters)
            paci.ack(event["id"], state={"counters": state})
        elif kind == "restore":
            with lock:
                counters.clear()
                counters.update(event["state"]["counters"])
                # Given back after an abandoned migration: serve on.
                mode["state"], mode["to"] = "serving", None
                lock.notify_all()
            paci.ack(event["id"])
        elif kind == "drain":
            with lock:
                if mode["state"] == "frozen":
                    # The successor has the state and the traffic: forward what still comes here.
                    mode["state"] = "forwarding"
                    mode["to"] = pending_target[0]
                    lock.notify_all()
            paci.ack(event["id"])
        else:
            paci.ack(event["id"])


def report_load(paci):
    while True:
        with lock:
            busy = in_flight[0]
        try:
            paci.report_load(in_flight=busy, custom={"counters": float(len(counters))})
        except OSError:
            pass
        time.sleep(1)


pending_target = [None]
listen = sys.argv[1] if len(sys.argv) > 1 else "8000"
port = int(listen) if not listen.startswith("/") else 0

ballast = bytearray(int(sys.argv[2]) << 20) if len(sys.argv) > 2 else b""
for offset in range(0, len(ballast), 4096):
    ballast[offset] = 1

if __name__ == "__main__":
    # As the first process of its instance, the default action of SIGTERM would be to ignore it.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if "PARACLOUD_PACI" in os.environ:
        paci = Paci()
        threading.Thread(target=follow_events, args=(paci,), daemon=True).start()
        threading.Thread(target=report_load, args=(paci,), daemon=True).start()
    if listen.startswith("/"):
        import socketserver

        class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        if os.path.exists(listen):
            os.unlink(listen)
        # A Unix peer has no address; the handler only logs it, and logging is off.
        Handler.address_string = lambda self: "unix"
        Handler.disable_nagle_algorithm = False
        server = UnixServer(listen, Handler)
    else:
        server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
        server.daemon_threads = True
    server.serve_forever()
