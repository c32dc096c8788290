"""Static server for a webformers site: MIME types for .wasm/.mjs, cross-origin isolation headers, ranges.

``serve(root, port)`` returns a running server (in a thread); ``server.add_root(prefix, path)``
serves an extra directory under a URL prefix (tests use it for fixture model repos).

Test hooks: ``server.log`` lists every request as ``{"method", "path", "range"}`` (the URL path without
its query; the ``Range`` header or None), ``server.requests_for(path)`` those of one path, and
``server.fail_after(path, nbytes, times=1)`` makes the next ``times`` answers for ``path`` close the
connection after ``nbytes`` bytes of their body (a download that breaks off; the connection closes
``FAIL_LINGER_S`` after the last byte, so the client has read them all).
"""
from __future__ import annotations

import http.server
import posixpath
import socket
import threading
import time
import urllib.parse
from pathlib import Path

MIME = {
    ".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
    ".json": "application/json", ".onnx": "application/octet-stream",
    ".onnx_data": "application/octet-stream", ".whl": "application/zip", ".zip": "application/zip",
    ".html": "text/html; charset=utf-8", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml",
    ".map": "application/json", ".txt": "text/plain; charset=utf-8", ".wav": "audio/wav",
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "webformers-serve"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _resolve(self, url_path: str) -> Path | None:
        path = posixpath.normpath(urllib.parse.unquote(url_path.split("?", 1)[0].split("#", 1)[0]))
        if not path.startswith("/"):
            return None
        for prefix, root in sorted(self.server.roots.items(), key=lambda kv: -len(kv[0])):
            if path == prefix.rstrip("/") or path.startswith(prefix):
                rel = path[len(prefix):].lstrip("/")
                if ".." in rel.split("/"):
                    return None
                full = root / rel  # symlinks inside the root are followed on purpose
                if full.is_dir():
                    full = full / "index.html"
                return full
        return None

    def _headers(self, status, length, ctype, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def _error(self, status, text):
        body = text.encode()
        self._headers(status, len(body), "text/plain; charset=utf-8")
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url_path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        self.server.record(self.command, url_path, self.headers.get("Range"))
        full = self._resolve(self.path)
        if full is None or not full.is_file():
            return self._error(404, f"not found: {self.path}")
        st = full.stat()
        size = st.st_size
        ctype = MIME.get(full.suffix, "application/octet-stream")
        start, end, status, extra = 0, size - 1, 200, []
        rng = self.headers.get("Range")
        # Pyodide's files carry a validator, so the browser keeps them in its HTTP cache (revalidated with a
        # 304): V8 then reuses its compiled code for pyodide.asm.wasm on the next visit
        if url_path.startswith("/pyodide/") and not rng:
            etag = f'"{size:x}-{st.st_mtime_ns:x}"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                for k, v in (("ETag", etag), ("Cache-Control", "no-cache"), ("Cross-Origin-Opener-Policy", "same-origin"),
                             ("Cross-Origin-Embedder-Policy", "require-corp"), ("Cross-Origin-Resource-Policy", "same-origin")):
                    self.send_header(k, v)
                self.end_headers()
                return
            extra.append(("ETag", etag))
        if rng and rng.startswith("bytes="):
            try:
                a, b = rng[6:].split(",")[0].split("-")
                if a == "":
                    start, end = max(0, size - int(b)), size - 1
                else:
                    start, end = int(a), min(int(b) if b else size - 1, size - 1)
                if start > end or start >= size:
                    raise ValueError
            except ValueError:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            extra.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        self._headers(status, end - start + 1, ctype, extra)
        if self.command == "HEAD":
            return
        cut = self.server.take_failure(url_path)
        with open(full, "rb") as f:
            f.seek(start)
            left = end - start + 1 if cut is None else min(cut, end - start + 1)
            try:
                while left > 0:
                    chunk = f.read(min(1 << 20, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
                if cut is not None:  # break the connection off mid-body, once the client has read the rest
                    self.wfile.flush()
                    time.sleep(self.server.FAIL_LINGER_S)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
            except (BrokenPipeError, ConnectionResetError):
                pass


class SiteServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    #: how long a broken-off answer waits before closing the connection (a browser drops the bytes it has
    #: not read yet when the connection fails, so without the wait the break point would vary)
    FAIL_LINGER_S = 0.5

    def __init__(self, root, port=0, host="127.0.0.1", verbose=False):
        super().__init__((host, port), Handler)
        self.roots = {"/": Path(root).resolve()}
        self.verbose = verbose
        self.thread = None
        #: every request: {"method", "path", "range"}
        self.log: list[dict] = []
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def record(self, method: str, path: str, byte_range: str | None) -> None:
        with self._lock:
            self.log.append({"method": method, "path": path, "range": byte_range})

    def requests_for(self, path: str) -> list[dict]:
        """The logged requests of the URL path ``path``."""
        with self._lock:
            return [r for r in self.log if r["path"] == path]

    def fail_after(self, path: str, nbytes: int, times: int = 1) -> None:
        """Let the next ``times`` answers for the URL path ``path`` close the connection after ``nbytes``
        bytes of their body (queued after earlier calls)."""
        with self._lock:
            self._failures.setdefault(path, []).extend([int(nbytes)] * times)

    def take_failure(self, path: str) -> int | None:
        """The byte count after which this answer for ``path`` breaks off, or None."""
        with self._lock:
            queue = self._failures.get(path)
            return queue.pop(0) if queue else None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def add_root(self, prefix: str, path) -> str:
        prefix = "/" + prefix.strip("/") + "/"
        self.roots[prefix] = Path(path).resolve()
        return self.url + prefix

    def start(self) -> "SiteServer":
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def serve(root, port=0, verbose=False, host="127.0.0.1") -> SiteServer:
    """Serve the site folder ``root`` in a thread (``port=0``: any free port); ``.url`` says where."""
    if not (Path(root) / "index.html").exists():
        raise FileNotFoundError(f"{root} has no index.html: build the site first (`webformers site {root} ...`)")
    return SiteServer(root, port, host=host, verbose=verbose).start()
