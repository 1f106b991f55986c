"""`flashmm data convert` and `flashmm data info`, run in-process."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from flashmm.data.commands import app
from flashmm.data.convert import convert
from flashmm.data.events import EventKind, load_events
from flashmm.data.samples import sample_path

SPOT = Path(__file__).parent / "data" / "binance" / "spot_btcusdt_20240808_head12k.gz"
runner = CliRunner()


def capture_lines() -> list[bytes]:
    return gzip.decompress(SPOT.read_bytes()).splitlines()


def write_capture(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "spot.npz"
    result = runner.invoke(
        app, ["convert", str(SPOT), "-o", str(out), "--market", "BTC/USDT", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: BTC/USDT, tick 0.01, lot 1e-06;" in result.stderr
    return out


def test_convert_writes_the_converted_events(converted: Path) -> None:
    expected = convert([SPOT], market="BTC/USDT").file
    loaded = load_events(converted)
    assert loaded.header == expected.header
    assert np.array_equal(loaded.events, expected.events)


def test_several_inputs_are_one_recording(tmp_path: Path, converted: Path) -> None:
    lines = capture_lines()
    first = write_capture(tmp_path / "part1.gz", lines[:5000])
    second = write_capture(tmp_path / "part2.gz", lines[5000:])
    out = tmp_path / "joined.npz"
    result = runner.invoke(
        app, ["convert", str(first), str(second), "-o", str(out), "--market", "BTC/USDT"]
    )
    assert result.exit_code == 0, result.output
    joined, whole = load_events(out), load_events(converted)
    assert np.array_equal(joined.events, whole.events)
    assert joined.header.inputs == ("part1.gz", "part2.gz")


def test_info_text(converted: Path) -> None:
    result = runner.invoke(app, ["info", str(converted)])
    assert result.exit_code == 0, result.output
    events = load_events(converted).events
    text = result.stdout
    assert "BTC/USDT (tick 0.01, lot 1e-06)" in text
    assert f"{len(events):,} in " in text
    assert "DEPTH_SNAPSHOT  2,000 rows in 1 batch\n" in text
    # the capture's first line arrived at 1723161253937 ms, but the first row is the trade
    # on line 4 (the two depth lines before it are inside the snapshot)
    assert "2024-08-08 23:54:14.087 UTC to " in text


def test_info_json_matches_the_file(converted: Path) -> None:
    result = runner.invoke(app, ["info", str(converted), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    events = load_events(converted).events
    assert info["rows"] == len(events)
    assert info["header"]["market"] == "BTC/USDT"
    trades = int(np.count_nonzero(events["kind"] == EventKind.TRADE))
    assert info["kinds"]["TRADE"] == {"rows": trades, "batches": trades}
    assert info["kinds"]["DEPTH_SNAPSHOT"]["batches"] == 1
    assert info["duration_s"] == (int(events["local_ts"][-1]) - int(events["local_ts"][0])) / 1e9
    # independently from the capture's text: trade prices, the snapshot and the last update
    lines = capture_lines()
    prices = [float(json.loads(x.split(b" ", 1)[1])["data"]["p"]) for x in lines if b"@trade" in x]
    assert info["trade_price_min"] == f"{min(prices):.2f}"
    assert info["trade_price_max"] == f"{max(prices):.2f}"
    assert info["first_seq"] == json.loads(lines[7].split(b" ", 1)[1])["lastUpdateId"]
    last_depth = next(x for x in reversed(lines) if b"@depth" in x)
    assert info["last_seq"] == json.loads(last_depth.split(b" ", 1)[1])["data"]["u"]


def test_info_on_the_packaged_sample() -> None:
    result = runner.invoke(app, ["info", str(sample_path()), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["header"]["market"] == "BTC/USDT"
    assert info["duration_s"] > 300


def failed(result: Result) -> str:
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert message.startswith("error: ")
    assert message.count("\n") == 1  # one line
    return message


def test_a_broken_capture_writes_nothing(tmp_path: Path) -> None:
    lines = capture_lines()
    depth = [i for i, line in enumerate(lines) if b"@depth" in line and i > 7]
    del lines[depth[10]]
    broken = write_capture(tmp_path / "broken.gz", lines)
    out = tmp_path / "out.npz"
    message = failed(runner.invoke(app, ["convert", str(broken), "-o", str(out)]))
    assert f"{broken}:{depth[11]}: depth chain broken" in message
    assert list(tmp_path.iterdir()) == [broken]


def test_a_truncated_gzip_is_an_error(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gz"
    cut.write_bytes(SPOT.read_bytes()[:100_000])
    out = tmp_path / "out.npz"
    message = failed(runner.invoke(app, ["convert", str(cut), "-o", str(out)]))
    assert message.startswith(f"error: {cut}: cannot read: Compressed file ended")
    assert not out.exists()


def test_an_existing_output_survives_a_failed_convert(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1723161254087891268 this is not json\n")
    out = tmp_path / "out.npz"
    out.write_bytes(b"keep me")
    message = failed(runner.invoke(app, ["convert", str(bad), "-o", str(out)]))
    assert "neither a Binance capture message nor a venue frame" in message
    assert out.read_bytes() == b"keep me"
    message = failed(
        runner.invoke(app, ["convert", str(bad), "-o", str(out), "--format", "binance"])
    )
    assert f"{bad}:1: " in message
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "csv"], "--format must be one of: auto, binance, frames"),
        (["--tick-size", "-1"], "the tick size must be a positive number, got -1.0"),
        (["--lot-size", "0"], "the lot size must be a positive number, got 0.0"),
        (["--tick-size", "0.1"], "is not a multiple of 0.1; pass the market's real increment"),
    ],
)
def test_convert_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out.npz"
    assert message in failed(runner.invoke(app, ["convert", str(SPOT), "-o", str(out), *args]))
    assert not out.exists()


def test_convert_output_must_be_writable_somewhere(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "out.npz"
    assert "no such directory" in failed(
        runner.invoke(app, ["convert", str(SPOT), "-o", str(missing)])
    )
    assert "is a directory" in failed(
        runner.invoke(app, ["convert", str(SPOT), "-o", str(tmp_path)])
    )


def test_info_rejects_what_is_not_an_event_file(tmp_path: Path) -> None:
    message = failed(runner.invoke(app, ["info", str(SPOT)]))
    assert message == f"error: {SPOT}: not an .npz event file (not a zip archive)\n"


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(tmp_path / "nope.gz"), "-o", "x.npz"])
    assert result.exit_code == 2
    assert "Invalid value for" in result.output
