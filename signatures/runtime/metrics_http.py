"""The Prometheus endpoint roots and leaves serve: ``/metrics`` only.

prometheus_client's own server answers the metrics on every path; a
scraper or an operator pointing at the wrong port or path then reads
something that looks right. This one answers 404, saying where the metrics
are, for any path but ``/metrics`` (a query string is ignored).
"""
from __future__ import annotations

import threading
from wsgiref.simple_server import make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

PATH = "/metrics"


def only_metrics(app):
    """``app`` at `PATH`; 404 elsewhere."""
    def serve(environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: the metrics are at {PATH}\n".encode()]
        return app(environ, start_response)
    return serve


def serve_metrics(registry, port: int, addr: str = "127.0.0.1"):
    """Serve ``registry`` on ``addr:port`` at `PATH`, from a daemon thread;
    (the server, its thread). OSError when the port cannot be bound."""
    class Server(ThreadingWSGIServer):
        pass

    Server.address_family, addr = _get_best_family(addr, port)
    httpd = make_server(addr, port, only_metrics(make_wsgi_app(registry)), Server,
                        handler_class=_SilentHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread


__all__ = ["PATH", "only_metrics", "serve_metrics"]
