"""Stands in for the OpenTelemetry collector in the compose stack on machines that cannot pull its
image (scripts/local-images.sh, docker/compose.local.yml): accepts OTLP/HTTP exports on port 4318
and answers them as a collector does (200, an empty protobuf response), counting requests and
bytes per path; GET /stats returns the counts as JSON, so a test can see that traces arrived."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {}


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        entry = counts.setdefault(self.path, {"requests": 0, "bytes": 0})
        entry["requests"] += 1
        entry["bytes"] += length
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        body = json.dumps(counts).encode()
        self.send_response(200 if self.path == "/stats" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 4318), Sink).serve_forever()
