"""The sidecar's OpenAPI document against the app itself (schemathesis): every documented
status code, header and body shape must be what the app answers, for generated requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from api_support import KEYS, accept, api_config, auth, engine_state, snapshots
from flashmm.api import create_app
from flashmm.state.schema import decode_command, encode


def _serve_commands(url: str, stop: threading.Event) -> None:
    """Answers commands as the engine would, and keeps its heartbeat fresh."""
    client = redis.Redis.from_url(url)
    last = "0-0"
    while not stop.is_set():
        client.set(KEYS.engine, encode(engine_state(time.time_ns())))
        for _stream, rows in client.xread({KEYS.commands: last}, block=50) or []:
            for entry_id, fields in rows:
                last = entry_id
                result = accept(decode_command(fields[b"data"]))
                client.xadd(KEYS.command_results, {"data": encode(result)})
    client.close()


@pytest.fixture
def app(redis_url: str) -> Iterator[FastAPI]:
    client = redis.Redis.from_url(redis_url)
    for snap in snapshots():
        client.set(KEYS.snapshot(snap.symbol), encode(snap))
    client.close()
    stop = threading.Event()
    engine = threading.Thread(target=_serve_commands, args=(redis_url, stop), daemon=True)
    engine.start()
    generous = {g: "100000/minute" for g in ("health", "trading", "metrics", "admin")}
    yield create_app(api_config(rate_limits=generous, command_timeout_s=5.0), redis_url)
    stop.set()
    engine.join(5)


@pytest.fixture
def api_schema(app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=auth("admin"))
