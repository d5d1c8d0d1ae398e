#!/usr/bin/env python3
"""Route 53's failover routing, on loopback, for the failover rehearsal (loadtest/failover.sh).

Health-checks the primary region's `/health/ready` every --interval seconds (each check bounded
by the interval) and sends all traffic to the primary while it is healthy; after --failures
consecutive failed checks it sends everything to the secondary, and back after as many
consecutive good ones, as a Route 53 failover record pair with a health check on the primary does
(Route 53: 10 or 30 s interval, failure threshold 1 to 10). Each switch is printed as one JSON
line with its Unix time in milliseconds. A request the chosen region cannot be reached for is
answered 502 (`{"error": {"code": "bad_gateway"}}`), as an ALB answers when no target takes it.

HTTP/1.1 with keep-alive on both sides; request and response bodies by Content-Length only
(Guildhall's API does not stream). Standard library only.
"""

import argparse
import http.client
import http.server
import json
import sys
import threading
import time
import urllib.parse

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
MAX_BODY = 1 << 20


class Router:
    """Which region gets the traffic now."""

    def __init__(self, primary, secondary):
        self.regions = {"primary": primary, "secondary": secondary}
        self.active = "primary"
        self.lock = threading.Lock()

    def target(self):
        with self.lock:
            return self.active, self.regions[self.active]

    def switch(self, to, reason):
        with self.lock:
            if self.active == to:
                return
            self.active = to
        print(json.dumps({"event": "switch", "to": to, "reason": reason, "unix_ms": int(time.time() * 1000)}), flush=True)


def healthy(url, timeout):
    parts = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        conn.request("GET", "/health/ready")
        status = conn.getresponse().status
        conn.close()
        return status == 200
    except OSError:
        return False


def check_loop(router, primary, interval, failures):
    bad = good = 0
    while True:
        started = time.monotonic()
        if healthy(primary, interval):
            bad, good = 0, good + 1
            if good >= failures:
                router.switch("primary", "primary healthy")
        else:
            bad, good = bad + 1, 0
            if bad >= failures:
                router.switch("secondary", f"primary failed {bad} checks")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def handler_for(router, timeout):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):
            pass

        def upstream(self, url):
            # One connection per upstream per client connection, kept alive.
            conns = self.__dict__.setdefault("conns", {})
            if url not in conns:
                parts = urllib.parse.urlsplit(url)
                conns[url] = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            return conns[url]

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self.answer(413, b'{"error":{"code":"payload_too_large","message":"body over 1 MiB"}}', {})
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            _, url = router.target()
            conn = self.upstream(url)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                return self.answer(502, b'{"error":{"code":"bad_gateway","message":"the region did not answer"}}', {})
            kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
            self.answer(response.status, data, kept)

        def answer(self, status, data, headers):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Type" not in headers and "content-type" not in headers:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = forward

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--primary", required=True, help="http://host:port of the primary region")
    parser.add_argument("--secondary", required=True, help="http://host:port of the secondary region")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between health checks")
    parser.add_argument("--failures", type=int, default=2, help="consecutive failed checks before failing over")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a forwarded request may take")
    args = parser.parse_args()
    router = Router(args.primary.rstrip("/"), args.secondary.rstrip("/"))
    threading.Thread(target=check_loop, args=(router, args.primary, args.interval, args.failures), daemon=True).start()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.listen), handler_for(router, args.timeout))
    server.daemon_threads = True
    print(json.dumps({"event": "listening", "port": args.listen, "unix_ms": int(time.time() * 1000)}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
