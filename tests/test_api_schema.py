"""The sidecar's OpenAPI document against the sidecar itself (schemathesis): every
documented status code, header and body shape must be what it answers, for generated
requests sent over a real socket to real uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings

from api_support import KEYS, accept, api_config, auth, engine_state, snapshots
from flashmm.api._server import uvicorn_config
from flashmm.state.schema import decode_command, encode


def _serve_commands(url: str, stop: threading.Event) -> None:
    """Answers commands as the engine would, and keeps its heartbeat fresh."""
    client = redis.Redis.from_url(url, socket_timeout=5)
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
def api_url(redis_url: str) -> Iterator[str]:
    """The sidecar under uvicorn in a thread of its own (one event loop for its whole
    life, as in production), on any free port of 127.0.0.1."""
    client = redis.Redis.from_url(redis_url)
    for snap in snapshots():
        client.set(KEYS.snapshot(snap.symbol), encode(snap))
    client.close()
    stop = threading.Event()
    engine = threading.Thread(target=_serve_commands, args=(redis_url, stop), daemon=True)
    engine.start()
    generous = {g: "100000/minute" for g in ("health", "trading", "metrics", "admin")}
    config = api_config(rate_limits=generous, command_timeout_s=5.0)
    server = uvicorn.Server(uvicorn_config(config, redis_url, "127.0.0.1", 0))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert serving.is_alive() and time.monotonic() < deadline, "the sidecar did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        serving.join(10)
        stop.set()
        engine.join(5)


@pytest.fixture
def api_schema(api_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=auth("admin"), timeout=30)
