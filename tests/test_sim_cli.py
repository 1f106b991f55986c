"""``flashmm sim`` as a process: the ready file, real data on the wire, a clean stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import connect
from flashmm.venue.protocol import BookUpdate, FrameDecoder, encode_subscribe


def start_sim(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp_path / "sim.ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashmm", "sim", "--ready-file", str(ready), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, ready


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"sim exited early: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "sim never became ready"
        time.sleep(0.05)
    return json.loads(ready.read_text())


async def test_sim_process_serves_the_default_markets_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    proc, ready = start_sim(tmp_path)
    try:
        info = wait_ready(proc, ready)
        assert info["pid"] == proc.pid and info["service"] == "sim"
        assert {"SEI/USDC", "ETH/USDC"} <= set(info["markets"])
        urls = info["urls"]
        assert set(urls) == {"market_data", "order_entry", "stream", "admin"}

        # the packaged real data is replayed: the BTC/USDT book is a real book
        md = await connect(urls["market_data"])
        md.send(encode_subscribe(1, "OrderBookUpdate", "BTC/USDT"))
        decoder = FrameDecoder()
        await md.recv()  # ack
        snapshot = decoder.decode(await md.recv()).events[0]
        assert isinstance(snapshot, BookUpdate) and snapshot.is_snapshot
        assert snapshot.bids.shape[0] > 100 and 10_000 < snapshot.bids[0, 0] < 200_000
        # and the synthetic markets trade by themselves
        async with httpx.AsyncClient(base_url=urls["order_entry"]) as rest:
            book = (await rest.get("/v1/markets/SEI/USDC/book?depth=5")).json()["data"]
        assert book["bids"] and book["asks"]
        assert float(book["bids"][0][0]) < float(book["asks"][0][0])
        md.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, proc.stderr.read().decode()  # type: ignore[union-attr]
    assert not ready.exists()  # removed on a clean stop


def test_bad_config_file_fails_with_a_message_and_no_ready_file(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text('[[markets]]\nmarket_id = "SEI/USDC"\nbase = "SEI"\n')
    proc, ready = start_sim(tmp_path, "--config", str(config))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "sim.toml" in err.decode() and "quote" in err.decode()  # names the missing field
    assert not ready.exists()


def test_a_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, ready = start_sim(tmp_path, "--order-entry-port", str(port))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err.decode()
    assert "address already in use" in err.decode().lower()
    assert not ready.exists()
