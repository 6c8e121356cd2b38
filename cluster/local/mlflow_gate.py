"""An origin gate in front of the local MLflow server's app.

MLflow 3.17 answers CORS for, and lets state-changing requests through from, every
``http://localhost:*``, ``http://127.0.0.1:*`` and ``http://[::1]:*`` origin in addition to
``--cors-allowed-origins``: a page served by any other local process (another port, another user) could
drive the API from a browser that holds the admin's basic-auth login. The gate refuses, before MLflow sees
it, every request whose ``Origin`` header is not exactly one of the server's allowed origins (the
``--cors-allowed-origins`` list, which ``mlflow server`` hands its workers as
``MLFLOW_SERVER_CORS_ALLOWED_ORIGINS``; none when it is unset). Requests without ``Origin`` (the Python
client, curl, page navigations) pass unchanged and still need basic-auth.

Launch: ``python -m cluster.local.mlflow_gate server <mlflow server options>`` runs MLflow's own
``server`` command (store set-up, admin bootstrap, uvicorn) with one change: uvicorn loads
:func:`create_app`, which builds the app MLflow would have served and wraps it in :class:`OriginGate`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Awaitable, Callable

INNER_APP = "VLSA_MLFLOW_INNER_APP"
"""The ``module:attribute`` uvicorn would have loaded (``()`` appended for a factory)."""
ALLOWED_ORIGINS = "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"
REFUSED = b"Cross-origin request refused: origin not allowed by this server"

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def allowed_origins(text: str | None) -> frozenset[str]:
    """The comma-separated origin list as exact strings (no wildcards: an entry matches itself only)."""
    return frozenset(o.strip().rstrip("/") for o in (text or "").split(",") if o.strip() and o.strip() != "*")


class OriginGate:
    """ASGI middleware: 403 for any HTTP or WebSocket request whose ``Origin`` is not in ``allowed``."""

    def __init__(self, app: Callable, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Callable, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            # Every Origin header is checked (a browser sends one; MLflow would read the first).
            origins = [value.decode("latin-1") for name, value in scope.get("headers") or [] if name == b"origin"]
            if any(origin not in self.allowed for origin in origins):
                return await _refuse(scope, send)
        return await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send) -> None:
    # No CORS headers at all, so a browser also hides the refusal itself from the foreign page.
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008})  # before accept: uvicorn answers 403
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(REFUSED)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": REFUSED})


def create_app() -> OriginGate:
    """uvicorn's factory: MLflow's app (named in ``INNER_APP``) behind the gate."""
    spec = os.environ[INNER_APP]
    module, _, attribute = spec.partition(":")
    target = getattr(importlib.import_module(module), attribute.removesuffix("()"))
    app = target() if attribute.endswith("()") else target
    return OriginGate(app, allowed_origins(os.environ.get(ALLOWED_ORIGINS)))


def _gated_uvicorn_command(build: Callable) -> Callable:
    """MLflow's uvicorn command builder, changed to load :func:`create_app` (MLflow's app in ``INNER_APP``)."""

    def command(uvicorn_opts, host, port, workers, app_name, env_file=None, is_factory=False):
        os.environ[INNER_APP] = f"{app_name}()" if is_factory else app_name  # the workers inherit it
        return build(uvicorn_opts, host, port, workers, f"{__spec__.name}:create_app", env_file, True)

    return command


def main(argv: list[str]) -> None:
    """``mlflow <argv>`` with the gate in front of the app."""
    import mlflow.server
    from mlflow.cli import cli

    # MLflow builds the uvicorn command line in this one function (3.17); without it the gate cannot be
    # placed, so refuse to start rather than serve without it.
    build = getattr(mlflow.server, "_build_uvicorn_command", None)
    if build is None:
        raise SystemExit(f"mlflow {mlflow.__version__}: no uvicorn command builder to put the origin gate in front of")
    mlflow.server._build_uvicorn_command = _gated_uvicorn_command(build)
    cli.main(args=argv, prog_name="mlflow")


if __name__ == "__main__":
    main(sys.argv[1:])
