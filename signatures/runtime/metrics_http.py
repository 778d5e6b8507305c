"""The HTTP endpoint roots and leaves serve on their metrics port.

- ``/metrics``: the Prometheus page;
- ``/livez``: 200 while the process's serving loop turns, 503 once it has
  not for a while (signatures/runtime/probes.py);
- ``/readyz``: 200 when the process serves what it should, 503 otherwise;
  the short plain-text body says why either way.

Any other path answers 404 naming these (prometheus_client's own server
answers the metrics on every path: a scraper or a probe pointed at the
wrong path then reads something that looks right). A query string is
ignored. Only GET and HEAD are served (405 otherwise), a request line
longer than MAX_REQUEST_LINE is refused (414), a connection silent for
SOCKET_TIMEOUT_S is dropped, and at most MAX_CONNECTIONS are served at once
(each holds a thread): one past that is answered 503 and closed at once.
The port may face the network, and nothing on it may hold the process or
grow it without bound.
"""
from __future__ import annotations

import threading
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family

from signatures.runtime.probes import Probes

PATH = "/metrics"
LIVE_PATH = "/livez"
READY_PATH = "/readyz"
PATHS = (PATH, LIVE_PATH, READY_PATH)
METHODS = ("GET", "HEAD")
MAX_REQUEST_LINE = 4096
SOCKET_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
TEXT = ("Content-Type", "text/plain; charset=utf-8")


def _text(start_response, status: str, body: str, *headers):
    data = (body.rstrip("\n") + "\n").encode()
    start_response(status, [TEXT, ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store"), *headers])
    return [data]


def endpoints(app, probes: Probes | None = None):
    """``app`` (the metrics) at `PATH`, the probes at theirs; 404 elsewhere,
    405 for a method but GET and HEAD. Without ``probes`` the process has
    none: both answer 503 saying so."""
    def serve(environ, start_response):
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        if method not in METHODS:
            return _text(start_response, "405 Method Not Allowed",
                         f"method not allowed: {method}; use GET or HEAD",
                         ("Allow", ", ".join(METHODS)))
        if method == "HEAD":   # the GET's status and headers, no body
            for _ in serve(dict(environ, REQUEST_METHOD="GET"), start_response):
                pass
            return []
        if path == PATH:
            return app(environ, start_response)
        if path in (LIVE_PATH, READY_PATH):
            if probes is None:
                return _text(start_response, "503 Service Unavailable",
                             "this process serves no probes")
            ok, why = probes.live() if path == LIVE_PATH else probes.ready()
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable", why)
        return _text(start_response, "404 Not Found",
                     f"not found: this port serves {', '.join(PATHS)}")
    return serve


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, bounded (see the module docstring) and silent."""
    timeout = SOCKET_TIMEOUT_S

    def handle(self):
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414, f"request line over {MAX_REQUEST_LINE} bytes")
            return
        if not self.parse_request():   # an error has been sent
            return
        handler = ServerHandler(self.rfile, self.wfile,  # type: ignore[arg-type]
                                self.get_stderr(), self.get_environ(), multithread=False)
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def log_message(self, format, *args):
        """Log nothing: probes come every few seconds."""


class _BoundedServer(ThreadingWSGIServer):
    """A thread per connection, at most MAX_CONNECTIONS of them."""

    request_queue_size = 64   # connections waiting to be accepted (the kernel's backlog)

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:   # no thread started: nothing else releases the slot
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request) -> None:
        """503 without reading the request: a fresh socket's send buffer takes
        these bytes at once, so the accepting thread never waits on the peer."""
        body = f"too many connections on this port ({MAX_CONNECTIONS} at once)\n".encode()
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            request.send(head + body)
            # What the peer already sent is read first: closing a socket with
            # unread bytes resets the connection, and a reset can discard the
            # answer before the peer reads it.
            request.recv(MAX_REQUEST_LINE)
        except OSError:
            pass
        self.shutdown_request(request)


def serve_metrics(registry, port: int, addr: str = "127.0.0.1", probes: Probes | None = None):
    """Serve ``registry`` on ``addr:port`` at `PATH` and ``probes`` at theirs,
    from a daemon thread; (the server, its thread). OSError when the port
    cannot be bound."""
    class Server(_BoundedServer):
        pass

    Server.address_family, addr = _get_best_family(addr, port)
    httpd = make_server(addr, port, endpoints(make_wsgi_app(registry), probes), Server,
                        handler_class=_Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread


def stop_serving(server) -> None:
    """Stop what `serve_metrics` returned (None: nothing)."""
    if server is None:
        return
    httpd, thread = server
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=2)


__all__ = ["LIVE_PATH", "MAX_CONNECTIONS", "PATH", "PATHS", "READY_PATH", "endpoints", "serve_metrics",
           "stop_serving"]
