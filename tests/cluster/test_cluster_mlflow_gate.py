"""The origin gate in front of the local MLflow app, on its own: which requests reach the app."""

from __future__ import annotations

import asyncio

from cluster.local.mlflow_gate import OriginGate, allowed_origins

OWN = "http://127.0.0.1:5000,http://localhost:5000"


def _call(scope_type: str, *origins: bytes | None) -> tuple[list[dict], bool]:
    """(messages the gate sent, whether the app was reached) for one request."""
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope)

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"127.0.0.1:5000")] + [(b"origin", origin) for origin in origins if origin is not None]
    gate = OriginGate(app, allowed_origins(OWN))
    asyncio.run(gate({"type": scope_type, "path": "/api/2.0/mlflow/runs/create", "headers": headers}, None, send))
    return sent, bool(reached)


def test_allowed_origins_are_exact_strings_without_wildcards():
    assert allowed_origins(" http://a:1/, http://b:2 ,*,") == {"http://a:1", "http://b:2"}
    assert allowed_origins(None) == frozenset()


def test_the_gate_passes_own_origins_and_requests_without_one():
    for origin in (None, b"http://127.0.0.1:5000", b"http://localhost:5000"):
        assert _call("http", origin) == ([], True), origin


def test_the_gate_refuses_every_other_origin_without_cors_headers():
    for origin in (b"http://localhost:5001", b"http://127.0.0.1:9", b"http://[::1]:5000", b"null", b""):
        sent, reached = _call("http", origin)
        assert not reached and sent[0]["status"] == 403, origin
        assert all(not name.startswith(b"access-control") for name, _ in sent[0]["headers"])
    sent, reached = _call("http", b"http://localhost:5001", b"http://localhost:5000")  # one foreign of two
    assert not reached and sent[0]["status"] == 403
    sent, reached = _call("websocket", b"http://localhost:5001")
    assert not reached and sent == [{"type": "websocket.close", "code": 1008}]
    assert _call("lifespan", None)[1]
