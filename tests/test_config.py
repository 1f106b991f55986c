"""Engine settings: TOML over defaults, FLASHMM_* over both, errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flashmm.config import ConfigError, EngineConfig, load_config


def test_defaults_quote_sei_and_eth_with_documented_limits() -> None:
    config = load_config(None, environ={})
    assert [m.market_id for m in config.enabled_markets] == ["SEI/USDC", "ETH/USDC"]
    assert config.orders.orders_per_second == 10
    assert config.orders.max_in_flight == 5
    assert config.risk.position_limit_fraction == 0.02
    assert config.engine.decide_hz == 5.0
    assert config == EngineConfig()


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(
        """
[risk]
max_drawdown = 0.04
[quoting]
base_size_lots = 20
[[markets]]
market_id = "SEI/USDC"
quoting = { base_size_lots = 5 }
"""
    )
    env = {
        "FLASHMM_RISK__MAX_DRAWDOWN": "0.03",
        "FLASHMM_VENUE__API_KEY": "secret-key",
        "FLASHMM_VENUE__MARKET_DATA_URLS": '["ws://a:1/websocket", "ws://b:2/websocket"]',
        "FLASHMM_CONFIG": "ignored: the command's own variable",
        "OTHER": "untouched",
    }
    config = load_config(path, environ=env)
    assert config.risk.max_drawdown == 0.03  # the environment wins over the file
    assert config.venue.api_key == "secret-key"  # a bare word is a string
    assert config.venue.market_data_urls == ["ws://a:1/websocket", "ws://b:2/websocket"]
    assert config.quoting.base_size_lots == 20
    (sei,) = config.enabled_markets
    assert config.market_quoting(sei).base_size_lots == 5  # the market's own override
    assert config.market_quoting(sei).gamma == config.quoting.gamma


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[risk]\nmax_drawdwn = 0.1\n", {}, ["max_drawdwn", "risk"]),
        ("[orders]\norders_per_second = 0\n", {}, ["orders_per_second"]),
        ("", {"FLASHMM_RISK__MAX_DRAWDOWN": "-1"}, ["FLASHMM_RISK__MAX_DRAWDOWN", "max_drawdown"]),
        ("", {"FLASHMM_ENGINE__METRICS_PORT": "http"}, ["metrics_port"]),
        ("[venue]\nrest_url = 'ftp://x'\n", {}, ["venue.rest_url"]),
        ("markets = []\n", {}, ["markets"]),
        ("[[markets]]\nmarket_id = 'A'\nquoting = { gamma = -1 }\n", {}, ["markets[A]", "gamma"]),
        ("model = 'missing.json'\n", {}, ["model", "missing.json"]),
        ("[risk\n", {}, ["not valid TOML"]),
        ("[feed]\nstale_after_s = 0\n", {}, ["feed.stale_after_s"]),
        ("[feed]\nping_interval_s = 1\npong_timeout_s = 3\n", {}, ["feed.pong_timeout_s"]),
        ("[feed]\nbackoff_max_s = 0.01\n", {}, ["feed.backoff_max_s"]),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], names: list[str]
) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=env)
    message = str(caught.value)
    assert str(path) in message
    for name in names:
        assert name in message


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/engine.toml", environ={})


def test_run_refuses_a_bad_config_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text("[risk]\nposition_limit_fraction = -0.5\n")
    done = subprocess.run(
        [sys.executable, "-m", "flashmm", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "position_limit_fraction" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_reports_an_unreachable_venue_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(
        f"""
[engine]
journal = "{tmp_path / "j.sqlite3"}"
[venue]
rest_url = "http://127.0.0.1:9"
[gateway]
request_timeout_s = 0.5
"""
    )
    done = subprocess.run(
        [sys.executable, "-m", "flashmm", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "cannot list the venue's markets" in done.stderr
    assert "Traceback" not in done.stderr
