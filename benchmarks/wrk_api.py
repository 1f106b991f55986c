"""Load figures of the ``flashmm api`` sidecar: REST throughput and WebSocket fan-out lag.

Not a pytest suite (it needs the ``wrk`` load generator and takes about half a minute):

    python benchmarks/wrk_api.py [--seconds 10] [--connections 16] [--clients 200]

It starts an embedded Valkey server holding a recorded engine state (two markets, with a
heartbeat kept fresh), then ``flashmm api`` (one worker, rate limits raised), and measures

1. ``GET /trading/status`` (then ``/health``, for comparison) with ``wrk --latency``
   (16 connections, 10 s, a valid token): requests/s and p99 latency. Targets for
   ``/trading/status``: >= 3,000 req/s, p99 <= 20 ms.
2. ``WS /ws/live-metrics`` fan-out: 200 clients connect at once (none may be refused or
   fail) and subscribe to channel ``trading`` while a publisher appends 10 events/s to its
   history stream, each stamped with its publish time: median and p99 delivery lag, and
   seqs missing or dropped. Targets: median <= 50 ms, none missing.

wrk is Debian's package: ``sudo apt-get install wrk`` (macOS: ``brew install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import websockets

from flashmm.api import mint_token
from flashmm.demo import DEMO_MARKETS, engine_document
from flashmm.state.keys import Keys
from flashmm.state.schema import (
    Counters,
    EngineState,
    MarketDataEvent,
    MarketSnapshot,
    ModelInfo,
    PortfolioView,
    PositionEvent,
    QuoteEvent,
    RiskView,
    encode,
)
from flashmm.state.valkey import EmbeddedValkey

KEYS = Keys()
EVENT_HZ = 10.0
HEARTBEAT_EVERY_S = 0.5


# ---------------------------------------------------------------------------- recorded state
def engine_state(now_ns: int) -> EngineState:
    return EngineState(
        version="bench",
        pid=os.getpid(),
        started_ns=now_ns - 60_000_000_000,
        heartbeat_ns=now_ns,
        ready=True,
        status="active",
        risk=RiskView(state="active", source="startup", since_ns=now_ns),
        markets=list(DEMO_MARKETS),
        portfolio=PortfolioView(
            capital=3_000_000.0,
            equity=3_000_001.5,
            realized_pnl=1.0,
            unrealized_pnl=0.7,
            fees=0.2,
            net_pnl=1.5,
            daily_pnl=1.5,
            peak_equity=3_000_002.0,
            drawdown=0.5,
            gross_notional=120.0,
            long_notional=100.0,
            short_notional=20.0,
            volume=2_400.0,
        ),
        counters=Counters(orders_placed=120, orders_filled=9, fills=11),
        model=ModelInfo(version="bench", horizon_ms=500),
    )


def snapshot(symbol: str, mid: float, now_ns: int) -> MarketSnapshot:
    position = PositionEvent(
        symbol=symbol,
        ts_ns=now_ns,
        position=0.5,
        avg_price=mid,
        mark_price=mid,
        position_usdc=0.5 * mid,
        position_percent=0.01,
        limit_percent=5.0,
        realized_pnl=0.5,
        unrealized_pnl=0.1,
        fees=0.05,
        pnl_usdc=0.55,
    )
    quote = QuoteEvent(
        symbol=symbol,
        ts_ns=now_ns,
        bid_price=mid * 0.999,
        bid_size=1.0,
        ask_price=mid * 1.001,
        ask_size=1.0,
        spread_bps=20.0,
    )
    return MarketSnapshot(
        symbol=symbol,
        ts_ns=now_ns,
        feed="live",
        book_valid=True,
        staleness_s=0.01,
        sequence=1000,
        best_bid=mid * 0.9995,
        best_ask=mid * 1.0005,
        mid=mid,
        spread_bps=10.0,
        outside_spread_bps=10.0,
        quote=quote,
        quoting=True,
        rate_budget_left=50.0,
        position=position,
        open_orders=2,
        last_quote_ns=now_ns,
    )


def keep_state_fresh(redis_url: str, stop: threading.Event) -> None:
    """Rewrite the engine state and snapshots with a fresh heartbeat, as the engine would."""
    import redis

    client = redis.Redis.from_url(redis_url)
    mids = {"BTC/USDT": 61_828.0, "SEI/USDC": 0.4}
    while not stop.is_set():
        now = time.time_ns()
        pipe = client.pipeline()
        pipe.set(KEYS.engine, encode(engine_state(now)))
        for symbol in DEMO_MARKETS:
            pipe.set(KEYS.snapshot(symbol), encode(snapshot(symbol, mids[symbol], now)))
        pipe.execute()
        stop.wait(HEARTBEAT_EVERY_S)
    client.close()


# ---------------------------------------------------------------------------- sidecar
def start_api(run_dir: Path, redis_url: str, secret: str, clients: int) -> subprocess.Popen[bytes]:
    config = run_dir / "engine.toml"
    config.write_text(engine_document(run_dir, redis_url, "127.0.0.1", 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHMM_")}
    env |= {
        "FLASHMM_API__JWT_SECRET": secret,
        "FLASHMM_API__RATE_LIMITS__TRADING": "100000000/minute",
        "FLASHMM_API__RATE_LIMITS__HEALTH": "100000000/minute",
        "FLASHMM_API__WS_MAX_PER_IP": str(clients + 10),
    }
    ready = run_dir / "api.ready.json"
    log = (run_dir / "api.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flashmm",
            "api",
            "--config",
            str(config),
            "--redis-url",
            redis_url,
            "--port",
            "0",
            "--ready-file",
            str(ready),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 60.0
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(
                f"flashmm api did not start; see {run_dir / 'api.log'}:\n"
                + (run_dir / "api.log").read_text()[-2000:]
            )
        time.sleep(0.1)
    return proc


def api_url(run_dir: Path) -> str:
    return str(json.loads((run_dir / "api.ready.json").read_text())["urls"]["api"])


# ---------------------------------------------------------------------------- wrk
def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    url: str, path: str, token: str, seconds: float, connections: int, run_dir: Path
) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit(
            "wrk is not installed: `sudo apt-get install wrk` (Debian/Ubuntu), "
            "`brew install wrk` (macOS)"
        )
    script = run_dir / "auth.lua"
    script.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    threads = min(connections, max(1, (os.cpu_count() or 2) // 2))
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        str(script),
        f"{url}{path}",
    ]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    print(f"GET {path}  {connections} connections, {seconds:g} s, {threads} wrk threads")
    targeted = path == "/trading/status"
    print(f"  requests/s  {rps:,.0f}" + ("   (target >= 3,000)" if targeted else ""))
    print(f"  p99 latency {p99:.2f} ms" + (" (target <= 20 ms)" if targeted else ""))
    print(f"  non-2xx     {non2xx.group(1) if non2xx else 0}")
    if errors:
        print(f"  {errors.group(0)}")


# ---------------------------------------------------------------------------- websockets
def _errors(log: Path, limit: int = 10) -> str:
    """The log's distinct warning, error and exception lines."""
    pattern = re.compile(r" (WARNING|ERROR) |^\w+(Error|Exception): ")
    lines = [ln for ln in log.read_text().splitlines() if pattern.search(ln)]
    return "\n".join(list(dict.fromkeys(lines))[:limit])


async def fan_out(
    url: str, token: str, redis_url: str, clients: int, seconds: float, log: Path
) -> None:
    import redis.asyncio as aioredis

    ws_url = url.replace("http://", "ws://") + f"/ws/live-metrics?token={token}"
    published: dict[int, int] = {}  # seq -> perf_counter_ns at publish
    lags_ms: list[float] = []
    received: list[set[int]] = [set() for _ in range(clients)]
    closed: list[str] = []
    ready_count = 0
    done = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal ready_count
        async with websockets.connect(ws_url, max_queue=None) as ws:
            await ws.send(json.dumps({"action": "subscribe", "channels": ["trading"]}))
            try:
                while not done.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    now = time.perf_counter_ns()
                    msg = json.loads(raw)
                    if msg.get("snapshot"):  # the subscription's first answer
                        ready_count += 1
                        continue
                    seq = msg.get("seq")
                    if msg.get("channel") == "trading" and seq in published:
                        received[i].add(seq)
                        lags_ms.append((now - published[seq]) / 1e6)
            except websockets.ConnectionClosed as exc:
                closed.append(f"client {i}: {exc}")

    # All clients connect at once: the sidecar must take the storm without failing any.
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    deadline = time.monotonic() + 60.0
    while ready_count < clients:
        if closed or time.monotonic() > deadline or all(t.done() for t in tasks):
            failed = [t.exception() for t in tasks if t.done() and t.exception() is not None]
            raise SystemExit(
                f"only {ready_count} of {clients} WebSocket clients subscribed; "
                f"closed: {closed[:3]}; failed: {failed[:3]}; its errors in {log}:\n"
                f"{_errors(log)}"
            )
        await asyncio.sleep(0.05)
    print(f"WS connect      {clients} clients connected and subscribed at once")
    redis = aioredis.Redis.from_url(redis_url)
    last = await redis.xrevrange(KEYS.history("trading"), count=1)
    seq = int(last[0][1][b"seq"]) if last else 0
    count = int(seconds * EVENT_HZ)
    for _ in range(count):
        seq += 1
        now_ns = time.time_ns()
        event = MarketDataEvent(
            symbol="SEI/USDC",
            ts_ns=now_ns,  # the publish time, shown to clients as the event's timestamp
            bid=0.3999,
            ask=0.4001,
            mid=0.4,
            spread_bps=5.0,
            last_trade_price=0.4,
            volume_24h=1000.0,
            seq=seq,
        )
        published[seq] = time.perf_counter_ns()
        await redis.xadd(KEYS.history("trading"), {"seq": seq, "data": encode(event)})
        await asyncio.sleep(1.0 / EVENT_HZ)
    await asyncio.sleep(1.0)  # the last events' delivery
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await redis.aclose()

    expected = set(published)
    missing = sum(len(expected - got) for got in received)
    lags_ms.sort()
    p99 = lags_ms[min(len(lags_ms) - 1, int(len(lags_ms) * 0.99))] if lags_ms else float("nan")
    print(f"WS /ws/live-metrics  {clients} clients on 'trading', {count} events at {EVENT_HZ:g} Hz")
    print(f"  delivered   {len(lags_ms):,} of {count * clients:,}")
    print(
        f"  median lag  {statistics.median(lags_ms) if lags_ms else float('nan'):.2f} ms "
        "(target <= 50 ms)"
    )
    print(f"  p99 lag     {p99:.2f} ms")
    print(f"  missing     {missing} (target 0); clients closed by the server: {len(closed)}")


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--clients", type=int, default=200, help="WebSocket clients")
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["/trading/status", "/health"],
        help="endpoints to load with wrk, one run each (targets are for /trading/status)",
    )
    parser.add_argument("--skip-wrk", action="store_true", help="measure the WebSockets only")
    args = parser.parse_args()
    secret = secrets.token_urlsafe(48)
    token = mint_token(secret, "read", "bench", 3600)
    with tempfile.TemporaryDirectory(prefix="flashmm-wrk-") as tmp:
        run_dir = Path(tmp)
        stop = threading.Event()
        with EmbeddedValkey(run_dir / "valkey") as valkey:
            fresh = threading.Thread(target=keep_state_fresh, args=(valkey.url, stop))
            fresh.start()
            api = start_api(run_dir, valkey.url, secret, args.clients)
            try:
                url = api_url(run_dir)
                if not args.skip_wrk:
                    for path in args.paths:
                        run_wrk(url, path, token, args.seconds, args.connections, run_dir)
                log = run_dir / "api.log"
                asyncio.run(fan_out(url, token, valkey.url, args.clients, args.seconds, log))
            finally:
                api.terminate()
                api.wait(15)
                stop.set()
                fresh.join()


if __name__ == "__main__":
    main()
