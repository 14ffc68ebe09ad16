#!/usr/bin/env python3
"""A real HTTP server on 127.0.0.1 that plays an SMS provider for the sender
adapter tests (standard library only).

    python3 tests/http_provider.py --port 8080 --out DIR

Routes (POST):
  /v1/messages   200 {"id": "prov-N"}      accepted
  /busy          503                        try again later
  /reject        400 {"error": "invalid_number"}
  /moved         302 -> /v1/messages        a redirect (must not be followed)
  /huge          200 with a 4 MiB body      over the adapter's response cap
Every request is written to DIR/NNNN.json: method, path, headers, body.
The server exits when its stdin closes (the test process is gone).
"""
import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counter = 0
lock = threading.Lock()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            sys.stderr.write("%s\n" % (fmt % a))

        def record(self, body):
            global counter
            with lock:
                counter += 1
                n = counter
            doc = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
            tmp = os.path.join(args.out, "%04d.tmp" % n)
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.rename(tmp, os.path.join(args.out, "%04d.json" % n))
            return n

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            n = self.record(body)
            if self.path == "/v1/messages":
                self.reply(200, json.dumps({"id": "prov-%d" % n}).encode(),
                           [("Content-Type", "application/json")])
            elif self.path == "/busy":
                self.reply(503, b"busy")
            elif self.path == "/reject":
                self.reply(400, json.dumps({"error": "invalid_number"}).encode(),
                           [("Content-Type", "application/json")])
            elif self.path == "/moved":
                self.reply(302, b"", [("Location", "http://127.0.0.1:%d/v1/messages" % args.port)])
            elif self.path == "/huge":
                self.reply(200, b"x" * (4 * 1024 * 1024))
            else:
                self.reply(404, b"not found")

        do_GET = do_POST

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The socket listens once the constructor returns: tell the test.
    print("listening on 127.0.0.1:%d" % args.port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.shutdown()


if __name__ == "__main__":
    main()
