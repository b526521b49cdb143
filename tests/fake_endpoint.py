"""A local OpenAI-compatible endpoint for tests: answers POSTs from a script of (status, headers, body)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Scripted:
    """A server answering POSTs from a list of (status, headers, body) in turn (the last one repeats)."""

    def __init__(self, replies: list[tuple[int, dict, bytes]], drip_s: float = 0.0):
        self.replies, self.calls = list(replies), 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                status, headers, body = owner.replies[min(owner.calls, len(owner.replies) - 1)]
                owner.calls += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                for i in range(len(body)):
                    if drip_s:
                        time.sleep(drip_s)
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
