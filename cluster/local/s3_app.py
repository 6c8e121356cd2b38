"""``python -m cluster.local.s3_app HOST PORT``: moto's S3 server with its control API shut off.

moto serves, next to the AWS APIs, an unauthenticated ``/moto-api/`` that can dump every stored object
and key (``data.json``), wipe the server (``reset``) or switch request authentication off again
(``reset-auth``). The local stack turns authentication on, so that API must not answer: this wraps
moto's own WSGI application, refuses every ``/moto-api`` path and every unsigned request, and answers
``READY_PATH`` itself so that start-up can be awaited without touching the AWS APIs (moto counts the
unauthenticated calls it allows).
"""

from __future__ import annotations

import sys

READY_PATH = "/vlsa-ready"


def guarded(app):
    """``app`` behind a filter that refuses moto's control API and answers the readiness path."""

    def middleware(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == READY_PATH:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ready\n"]
        if path.startswith("/moto-api"):
            return _refuse(start_response, "the moto control API is disabled on this endpoint")
        if "HTTP_AUTHORIZATION" not in environ:  # moto would fail on it with a 500 instead of refusing
            return _refuse(start_response, "anonymous requests are refused: sign them with the stack's key")
        return app(environ, start_response)

    return middleware


def _refuse(start_response, message: str) -> list[bytes]:
    body = f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>".encode()
    start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def main(argv: list[str]) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    host, port = argv[0], int(argv[1])
    app = guarded(DomainDispatcherApplication(create_backend_app))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
