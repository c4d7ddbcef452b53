"""A local HTTP server on 127.0.0.1 that serves lists from memory, for tests of list sources.

Each route replies with a body and optional ETag and Last-Modified, replies 304 to a matching
If-None-Match or If-Modified-Since, and can instead reply with an error status, a redirect, a delay
before the response, or a body sent without Content-Length. Every request is recorded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """The response of the server for one path."""

    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    status: int = 200
    delay_s: float = 0.0
    send_length: bool = True
    redirect_to: str | None = None


@dataclass
class Request:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class ListServer:
    """Serves routes on 127.0.0.1 at a free port from a background thread."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="list server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes | str = b"", **options: object) -> str:
        """Set the response for `path`; return its URL."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self.routes[path] = Route(body=data, **options)  # type: ignore[arg-type]
        return self.url(path)

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(server: ListServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return None

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            request = Request(self.path, {name.lower(): value for name, value in self.headers.items()})
            with server._lock:
                server.requests.append(request)
                route = server.routes.get(self.path)
            if route is None:
                request.status = 404
                self.send_error(404)
                return
            if route.delay_s:
                time.sleep(route.delay_s)
            if route.redirect_to is not None:
                request.status = 302
                self.send_response(302)
                self.send_header("Location", route.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if route.status != 200:
                request.status = route.status
                self.send_error(route.status)
                return
            unchanged = (route.etag is not None and request.headers.get("if-none-match") == route.etag) or (
                route.last_modified is not None and request.headers.get("if-modified-since") == route.last_modified
            )
            request.status = 304 if unchanged else 200
            self.send_response(request.status)
            if route.etag:
                self.send_header("ETag", route.etag)
            if route.last_modified:
                self.send_header("Last-Modified", route.last_modified)
            if unchanged:
                self.end_headers()
                return
            if route.send_length:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

    return Handler
