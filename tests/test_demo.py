"""`flashmm demo`: its config files, run directory and summary, and one real end-to-end run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from flashmm.config import load_config
from flashmm.demo import (
    DEMO_MARKETS,
    DEMO_TAKER_RATE_PER_S,
    MARKER,
    DemoError,
    DemoSettings,
    RunDirError,
    child_env,
    claimed_run_dir,
    demo_sim_markets,
    engine_document,
    sim_document,
    summarize_journal,
    toml_document,
)
from flashmm.engine.journal import Journal
from flashmm.engine.records import Fill, Order, OrderState, Side
from flashmm.state.valkey import read_url_file
from flashmm.venue.sim.config import load_config as load_sim_config

T = TypeVar("T")


# ---------------------------------------------------------------------------- config files
def test_toml_document_reads_back_as_the_same_data() -> None:
    data = {
        "name": 'quote " and \\ and é',
        "engine": {"port": 0, "ratio": 0.25, "on": True, "urls": ["ws://a", "ws://b"]},
        "markets": [
            {"market_id": "SEI/USDC", "synthetic": {"seed": 11, "rate": 1.5}},
            {"market_id": "BTC/USDT", "odd key": False},
        ],
    }
    assert tomllib.loads(toml_document(data)) == data


def test_engine_config_quotes_both_demo_markets_with_free_ports(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(engine_document(tmp_path, "redis://127.0.0.1:6390/0", "127.0.0.1", 0))
    cfg = load_config(path, environ={})
    assert [m.market_id for m in cfg.markets] == ["BTC/USDT", "SEI/USDC"]
    assert cfg.engine.metrics_port == 0
    assert cfg.engine.journal == str(tmp_path / "journal.sqlite3")
    assert cfg.state.redis_url == "redis://127.0.0.1:6390/0"
    assert (cfg.api.host, cfg.api.port) == ("127.0.0.1", 0)


def test_sim_config_replays_btc_and_synthesizes_sei_only(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(sim_document())
    cfg = load_sim_config(path)
    assert [(m.market_id, m.source) for m in cfg.markets] == [
        ("BTC/USDT", "replay"),
        ("SEI/USDC", "synthetic"),
    ]
    assert cfg.markets[0].replay.file == "sample:btcusdt_spot_20240808"
    assert cfg.markets[1].synthetic.market_base_rate_per_s == DEMO_TAKER_RATE_PER_S
    assert {a.name for a in cfg.accounts} == {"demo", "other"}  # other sections: defaults


# ---------------------------------------------------------------------------- settings, env
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"api_port": 70000}, "--port must be within 0..65535"),
        ({"api_port": -1}, "--port must be within 0..65535"),
        ({"duration_s": 0.0}, "--duration must be > 0"),
        ({"duration_s": -5.0}, "--duration must be > 0"),
        ({"ready_timeout_s": 0.0}, "ready_timeout_s must be > 0"),
    ],
)
def test_settings_refuse_bad_values(changes: dict[str, float], message: str) -> None:
    with pytest.raises(DemoError, match=message):
        DemoSettings(**changes)


def test_children_see_no_flashmm_variables_of_the_caller() -> None:
    env = child_env(
        {"PATH": "/bin", "FLASHMM_STATE__REDIS_URL": "redis://elsewhere", "FLASHMM_CONFIG": "x"},
        {"FLASHMM_API__JWT_SECRET": "s"},
    )
    assert env == {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "FLASHMM_API__JWT_SECRET": "s"}


# ---------------------------------------------------------------------------- run directory
def test_run_dir_refuses_a_foreign_non_empty_directory_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "engine.log").write_text("mine")
    with pytest.raises(RunDirError, match="not a demo run directory"), claimed_run_dir(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.log"]
    assert (tmp_path / "engine.log").read_text() == "mine"


def test_run_dir_is_emptied_of_a_previous_demo_files_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    with claimed_run_dir(run_dir) as path:
        assert path == run_dir.absolute()
        (path / "engine.log").write_text("old run")
        (path / "journal.sqlite3").write_text("old run")
        (path / "notes.txt").write_text("the user's")
    with claimed_run_dir(run_dir) as path:
        assert sorted(p.name for p in path.iterdir()) == [MARKER, "notes.txt"]


def test_run_dir_is_refused_while_another_demo_uses_it(tmp_path: Path) -> None:
    with (
        claimed_run_dir(tmp_path / "demo"),
        pytest.raises(RunDirError, match="another flashmm demo is running"),
        claimed_run_dir(tmp_path / "demo"),
    ):
        pass


# ---------------------------------------------------------------------------- summary
def _fill(trade_id: str, side: Side, price_ticks: int, size_lots: int, fee: str) -> Fill:
    return Fill(
        trade_id=trade_id,
        order_id=f"o-{trade_id}",
        client_order_id=f"c-{trade_id}",
        market_id="BTC/USDT",
        side=side,
        price_ticks=price_ticks,
        size_lots=size_lots,
        fee=Decimal(fee),
        liquidity="maker",
        ts_ns=1_700_000_000_000_000_000,
    )


def _journal_fill(journal: Journal, fill: Fill) -> None:
    order = Order(
        client_order_id=fill.client_order_id,
        market_id=fill.market_id,
        side=fill.side,
        price_ticks=fill.price_ticks,
        size_lots=fill.size_lots,
        state=OrderState.FILLED,
        order_id=fill.order_id,
        filled_lots=fill.size_lots,
    )
    assert journal.record_fill(fill, order)


def test_summary_replays_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        # BTC/USDT: tick 0.01, lot 0.000001 BTC
        _journal_fill(journal, _fill("t1", Side.BUY, 6_182_800, 100, "0.001"))
        _journal_fill(journal, _fill("t2", Side.SELL, 6_182_900, 40, "0.0005"))
    btc, sei = summarize_journal(path, {"BTC/USDT": 61_830.00})
    assert btc.market_id == "BTC/USDT"
    assert btc.fills == 2
    assert btc.position == pytest.approx(60 * 0.000001)
    # (100 * 61828.00 + 40 * 61829.00) * 0.000001
    assert btc.volume == pytest.approx(6.1828 + 2.473_16)
    # 40 lots sold 1.00 above the average of 61828.00
    assert btc.realized_pnl == pytest.approx(40 * 0.000001 * 1.00)
    assert btc.fees == pytest.approx(0.0015)
    # unrealized: 60 lots at 61830.00 against 61828.00
    assert btc.net_pnl == pytest.approx(0.000_04 + 60 * 0.000001 * 2.00 - 0.0015)
    assert (sei.market_id, sei.fills, sei.position, sei.net_pnl) == ("SEI/USDC", 0, 0.0, None)
    assert DEMO_MARKETS == ("BTC/USDT", "SEI/USDC")


# ---------------------------------------------------------------------------- end to end
DURATION_S = 20
LOT_SIZE = {m.market_id: float(m.lot_size) for m in demo_sim_markets()}


def _until(
    check: Callable[[], T | None], what: str, proc: subprocess.Popen[str], timeout: float
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert proc.poll() is None, f"the demo exited ({proc.returncode}) before {what}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def _ready(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _line(lines: list[str], prefix: str) -> str | None:
    return next((ln.split()[-1] for ln in lines if ln.strip().startswith(prefix)), None)


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def test_demo_trades_agrees_with_its_journal_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHMM_")}
    with (tmp_path / "demo.stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flashmm", "demo", "--duration", str(DURATION_S), "--port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))
    reader.start()
    run_dir = tmp_path / ".flashmm-demo"
    try:
        ready = {
            name: _until(lambda n=name: _ready(run_dir / f"{n}.ready.json"), name, proc, 45.0)
            for name in ("sim", "engine", "api")
        }
        token = _until(lambda: _line(lines, "admin token"), "the token", proc, 5.0)
        docs = _line(lines, "API docs")
        redis_url = read_url_file(run_dir)
        assert redis_url is not None
        urls = [u for r in ready.values() for u in r["urls"].values()] + [redis_url]
        assert all(_listening(u) for u in urls)
        pids = [r["pid"] for r in ready.values()]
        api_url = ready["api"]["urls"]["api"]
        assert docs == f"{api_url}/docs"

        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api_url, headers=auth, timeout=10.0) as api:
            assert api.get("/docs").status_code == 200
            assert api.get("/trading/status", headers={"Authorization": ""}).status_code == 401

            def filled() -> dict[str, Any] | None:
                body = api.get("/trading/orders").raise_for_status().json()
                return body if body["recent_fills"] else None

            orders = _until(filled, "a fill in /trading/orders", proc, DURATION_S - 5)
            status = api.get("/trading/status").raise_for_status().json()
            assert status["risk_level"] in ("active", "reducing")
            assert {m["symbol"] for m in status["markets"]} == set(DEMO_MARKETS)
            # The printed token is an admin's: pausing stops new fills, so what the API
            # reports next can be compared with the journal exactly.
            paused = api.post("/admin/pause", json={"reason": "compare with the journal"})
            assert paused.status_code == 200, paused.text

            def settled() -> dict[str, Any] | None:
                """Positions once no order is live and none changes for a second."""
                if api.get("/trading/orders").raise_for_status().json()["active_orders"]:
                    return None
                first = api.get("/trading/positions").raise_for_status().json()
                time.sleep(1.0)
                second = api.get("/trading/positions").raise_for_status().json()
                held = [(p["base_balance"], p["realized_pnl"]) for p in first["positions"]]
                now = [(p["base_balance"], p["realized_pnl"]) for p in second["positions"]]
                return second if held == now else None

            positions = _until(settled, "settled positions", proc, 8.0)
            fills_seen = api.get("/trading/orders").raise_for_status().json()["recent_fills"]
        assert proc.wait(timeout=45.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5.0)
    output = "".join(lines)

    # quotes were placed, some were filled, and the API saw those fills
    with Journal(run_dir / "journal.sqlite3") as journal:
        state = journal.load()
    assert state.fills, output
    assert len(state.orders) > len(state.fills)
    assert {f["fill_id"] for f in orders["recent_fills"]} <= {f.trade_id for f in state.fills}
    assert {f["fill_id"] for f in fills_seen} <= {f.trade_id for f in state.fills}

    # positions and realized PnL of the API are the journal's
    summaries = {s.market_id: s for s in summarize_journal(run_dir / "journal.sqlite3", {})}
    by_symbol = {p["symbol"]: p for p in positions["positions"]}
    assert set(by_symbol) == set(DEMO_MARKETS)
    for market in DEMO_MARKETS:
        lots = sum(f.side * f.size_lots for f in state.fills if f.market_id == market)
        assert by_symbol[market]["base_balance"] == pytest.approx(lots * LOT_SIZE[market])
        assert summaries[market].position == pytest.approx(lots * LOT_SIZE[market])
        assert by_symbol[market]["realized_pnl"] == pytest.approx(
            summaries[market].realized_pnl, abs=1e-9
        )

    # the summary counts the journal's fills; nothing is left running or listening
    assert "risk state at the end: paused" in output
    for market in DEMO_MARKETS:
        fills = sum(f.market_id == market for f in state.fills)
        assert re.search(rf"{re.escape(market)}\W+{fills}\W", output), output
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    assert not [u for u in urls if _listening(u)]
    assert not list(run_dir.glob("*.ready.json"))
