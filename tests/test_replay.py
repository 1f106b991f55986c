"""`flashmm replay` over real Binance data and over venue frames made from it."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashmm.backtest.replay import COLUMNS, FeedFormat, ReplayError, replay
from flashmm.cli import app
from flashmm.data.frames import binance_to_frames

DATA = Path(__file__).parent / "data" / "binance"
SPOT = DATA / "spot_btcusdt_20240808_head12k.gz"
runner = CliRunner()


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def spot_csv() -> str:
    out = io.StringIO()
    report = replay([SPOT], out)
    assert report.bad_lines == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def spot_frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "spot_frames.txt"
    with path.open("wb") as f:
        for recv_ns, frame in binance_to_frames([SPOT], "BTC/USDT"):
            f.write(b"%d %s\n" % (recv_ns, frame))
    return path


def test_binance_rows_follow_the_book(spot_csv: str) -> None:
    rows = rows_of(spot_csv)
    assert tuple(rows[0].keys()) == COLUMNS
    assert len(rows) > 1000
    # the first row is the REST snapshot (line 8 of the capture): its best levels
    snapshot = json.loads(gzip.decompress(SPOT.read_bytes()).splitlines()[7].split(b" ", 1)[1])
    assert rows[0]["sequence"] == str(snapshot["lastUpdateId"])
    assert float(rows[0]["bid_px"]) == float(snapshot["bids"][0][0])
    assert float(rows[0]["ask_px"]) == float(snapshot["asks"][0][0])
    assert float(rows[0]["bid_sz"]) == float(snapshot["bids"][0][1])
    sequences = [int(r["sequence"]) for r in rows]
    assert sequences == sorted(set(sequences))  # each applied update once, in order
    for r in rows:
        bid, ask, mid = float(r["bid_px"]), float(r["ask_px"]), float(r["mid"])
        assert bid < ask
        assert mid == pytest.approx((bid + ask) / 2)
        assert r["direction"] in {"-1", "0", "1"}
        assert 1 / 3 - 1e-9 <= float(r["confidence"]) <= 1.0
        # post-only quotes never cross the book
        assert float(r["quote_bid"]) < ask
        assert float(r["quote_ask"]) > bid


def test_venue_frames_replay_the_same_market_identically(spot_csv: str, spot_frames: Path) -> None:
    out = io.StringIO()
    report = replay([spot_frames], out)
    assert report.market == "BTC/USDT"
    assert (report.tick_size, report.lot_size) == (0.01, pytest.approx(1e-6))
    assert report.statuses == {"OK": report.rows}
    from_frames, from_capture = rows_of(out.getvalue()), rows_of(spot_csv)
    assert len(from_frames) == len(from_capture)
    # the venue renumbers sequences 1, 2, 3...; everything else is the same path
    assert [int(r["sequence"]) for r in from_frames] == list(range(1, len(from_frames) + 1))
    strip = [{k: v for k, v in r.items() if k != "sequence"} for r in from_frames]
    assert strip == [{k: v for k, v in r.items() if k != "sequence"} for r in from_capture]


def test_unreadable_lines_are_reported_with_numbers_and_skipped(
    spot_frames: Path, tmp_path: Path
) -> None:
    lines = spot_frames.read_bytes().splitlines()[:400]
    clean = tmp_path / "clean.txt"
    clean.write_bytes(b"\n".join(lines) + b"\n")
    damaged = list(lines)
    damaged.insert(50, b"not a frame at all")
    damaged.insert(120, b'1723161254206652067 {"jsonrpc":"2.0","result":{"events":[{')
    missing_sequence = lines[199].replace(b'"sequence"', b'"seq"')  # valid JSON, bad event
    assert missing_sequence != lines[199]
    damaged.insert(200, missing_sequence)
    dirty = tmp_path / "dirty.txt"
    dirty.write_bytes(b"\n".join(damaged) + b"\n")

    result = runner.invoke(app, ["replay", str(dirty), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "dirty.txt:51: expected '<receive_ns> <frame>'" in result.stderr
    assert "dirty.txt:121: invalid JSON" in result.stderr
    assert "dirty.txt:201:" in result.stderr
    assert "sequence" in result.stderr.split("dirty.txt:201:")[1].split("\n")[0]
    assert "3 unreadable lines skipped" in result.stderr
    clean_rows = rows_of(runner.invoke(app, ["replay", str(clean), "--no-progress"]).stdout)
    assert rows_of(result.stdout) == clean_rows


def test_output_file_and_explicit_increments(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app,
        ["replay", str(SPOT), "-o", str(out), "--tick-size", "0.01", "--lot-size", "0.000001"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert len(rows_of(out.read_text())) > 1000


def test_increments_off_the_data_grid_reject_every_update(tmp_path: Path) -> None:
    # a tick coarser than the data's: every frame is off the grid and REJECTED, none applied
    result = runner.invoke(app, ["replay", str(SPOT), "--tick-size", "0.1", "--no-progress"])
    assert result.exit_code == 0
    assert rows_of(result.stdout) == []
    assert "REJECTED 1" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tick-size", "-1"], "--tick-size must be a positive number"),
        (["--format", "csv"], "--format must be one of"),
        (["--model", "MISSING"], "MISSING"),
    ],
)
def test_bad_options_fail_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path
) -> None:
    args = [str(tmp_path / a) if a == "MISSING" else a for a in args]
    result = runner.invoke(app, ["replay", str(SPOT), *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_unknown_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello world\n")
    with pytest.raises(ReplayError, match="neither a Binance capture message nor a venue frame"):
        replay([path], io.StringIO())
    result = runner.invoke(app, ["replay", str(path)])
    assert result.exit_code == 2


def test_capture_without_snapshot_gives_no_rows(tmp_path: Path) -> None:
    lines = gzip.decompress(SPOT.read_bytes()).splitlines()
    path = tmp_path / "nosnap.txt"
    path.write_bytes(b"\n".join(line for line in lines[:300] if b"lastUpdateId" not in line))
    out = io.StringIO()
    report = replay([path], out, fmt=FeedFormat.BINANCE)
    assert report.rows == 0
    assert report.trades > 0


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "flashmm", "replay", str(SPOT), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "book statuses: OK" in proc.stderr
    assert out.read_text().startswith(",".join(COLUMNS) + "\n")
