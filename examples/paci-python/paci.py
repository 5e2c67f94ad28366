"""A PaCI client in plain Python: the standard library only, HTTP/1.1 over the instance's socket.

    from paci import Paci
    paci = Paci()                       # the socket in $PARACLOUD_PACI
    me = paci.whoami()                  # {"app": ..., "instance": "counter.1", ...}
    paci.set_weight(10)                 # a low share while warming up
    paci.set_weight(None)               # the full share again
    paci.report_load(in_flight=3, capacity=250.0)
    for event in paci.events():         # {"id": 7, "kind": "drain", "deadline": ...}
        paci.ack(event["id"])

Errors from the platform raise PaciError with its status and message (what is wrong and how to
fix it). The protocol is described in docs/paci.md.
"""

import json
import os
import socket


class PaciError(Exception):
    def __init__(self, status, message):
        super().__init__(f"{message} ({status})")
        self.status = status
        self.message = message


class Paci:
    def __init__(self, path=None):
        self.path = path or os.environ["PARACLOUD_PACI"]

    def _open(self, method, target, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: paci\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        headers = {}
        while True:
            line = reader.readline().strip()
            if not line:
                break
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return sock, reader, status, headers

    @staticmethod
    def _body(reader, headers):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return b"".join(_chunks(reader))
        length = headers.get("content-length")
        return reader.read(int(length)) if length is not None else reader.read()

    def _call(self, method, target, body=None):
        sock, reader, status, headers = self._open(method, target, body)
        try:
            data = self._body(reader, headers)
        finally:
            sock.close()
        answer = json.loads(data) if data else None
        if status >= 400:
            raise PaciError(status, (answer or {}).get("error", data.decode(errors="replace")))
        return answer

    def _lines(self, target):
        sock, reader, status, headers = self._open("GET", target)
        if status >= 400:
            data = self._body(reader, headers)
            sock.close()
            raise PaciError(status, json.loads(data).get("error", ""))
        buffer = b""
        try:
            for chunk in _chunks(reader):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            sock.close()

    def whoami(self):
        return self._call("GET", "/v1/whoami")

    def peers(self, service=None):
        query = f"?service={service}" if service else ""
        return self._call("GET", f"/v1/peers{query}")

    def watch_peers(self, service=None):
        query = f"service={service}&" if service else ""
        return self._lines(f"/v1/peers?{query}watch=true")

    def report_load(self, in_flight=None, queue=None, capacity=None, custom=None):
        report = {"in_flight": in_flight, "queue": queue, "capacity": capacity}
        report = {k: v for k, v in report.items() if v is not None}
        if custom:
            report["custom"] = custom
        return self._call("PUT", "/v1/load", report)

    def set_weight(self, weight):
        return self._call("PUT", "/v1/weight", {"weight": weight})["weight"]

    def ask_replicas(self, service, replicas, reason=None):
        body = {"replicas": replicas}
        if reason:
            body["reason"] = reason
        return self._call("PUT", f"/v1/services/{service}/replicas", body)

    def events(self):
        return self._lines("/v1/events")

    def ack(self, event_id, state=None, error=None):
        body = {}
        if state is not None:
            body["state"] = state
        if error is not None:
            body["error"] = error
        return self._call("POST", f"/v1/events/{event_id}/ack", body)


def _chunks(reader):
    """The chunks of a chunked HTTP body, as they arrive."""
    while True:
        size_line = reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            reader.readline()
            return
        data = reader.read(size)
        reader.readline()
        yield data
