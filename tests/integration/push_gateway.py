#!/usr/bin/env python3
"""A push gateway for push_itest: HTTPS on a free loopback port (its certificate from a
test CA), one JSON line per POST in LOG, answers by token prefix:
  flaky*  500 to the first two POSTs, then 200
  dead*   404 (FCM shape) / 410 {"reason":"Unregistered"} (APNs shape)
  unreg*  400 {"error":{"status":"INVALID_ARGUMENT","details":[{"errorCode":"UNREGISTERED"}]}}
  other   200
Usage: push_gateway.py CERT KEY PORTFILE LOG (the port is written to PORTFILE when ready)."""
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

cert, key, portfile, logfile = sys.argv[1:5]
counts = {}
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(min(n, 65536))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self.path.startswith("/3/device/"):
            platform, token = "apns", self.path[len("/3/device/"):]
        else:
            platform = "fcm"
            token = (body or {}).get("message", {}).get("token", "")
        with lock:
            counts[token] = counts.get(token, 0) + 1
            k = counts[token]
        if token.startswith("flaky") and k <= 2:
            status, resp = 500, {"error": {"status": "INTERNAL"}}
        elif token.startswith("dead"):
            status, resp = (410, {"reason": "Unregistered"}) if platform == "apns" else (404, {"error": {"status": "NOT_FOUND"}})
        elif token.startswith("unreg"):
            status, resp = 400, {"error": {"status": "INVALID_ARGUMENT", "details": [{"errorCode": "UNREGISTERED"}]}}
        else:
            status, resp = 200, {"name": "projects/test/messages/%d" % k}
        line = {"platform": platform, "token": token, "status": status, "path": self.path,
                "push_type": self.headers.get("apns-push-type", ""), "body": body}
        with lock, open(logfile, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        out = json.dumps(resp).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, fmt, *args):
        pass

srv = HTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(portfile + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))

os.rename(portfile + ".tmp", portfile)
srv.serve_forever()
