"""A file server on 127.0.0.1 for the download tests: HTTP Range requests, a switch that breaks
off a response part-way (as a dropped connection does), and a log of what was asked."""
import http.server
import os
import re
import threading


class ZooServer:
    def __init__(self, folder: str):
        self.folder = folder
        self.requests = []          # (path, Range header or None)
        self.break_after = None     # bytes sent before the connection is dropped, once
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get('Range')))
                path = os.path.join(server.folder, os.path.basename(self.path))
                if not os.path.isfile(path):
                    self.send_error(404, 'Not Found')
                    return
                data = open(path, 'rb').read()
                start = 0
                match = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range') or '')
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_error(416, 'Range Not Satisfiable')
                        return
                    self.send_response(206)
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if server.break_after is not None:
                    cut, server.break_after = server.break_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self._httpd.server_port}'
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
