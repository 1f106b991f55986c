"""The ``flashmm`` command."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from flashmm import __version__
from flashmm._console import (
    FormatOption,
    LotSizeOption,
    ProgressOption,
    TickSizeOption,
    err,
    fail,
    file_progress,
    out,
)
from flashmm.data import commands as data_commands

app = typer.Typer(
    name="flashmm",
    help="FlashMM: a predictive market maker for central-limit order books.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.add_typer(data_commands.app, name="data")


@app.callback()
def _root() -> None:
    """FlashMM: a predictive market maker for central-limit order books."""


def _config_option(help: str) -> Any:
    """``--config``: the one settings file of engine, sidecar and token (or FLASHMM_CONFIG)."""
    return typer.Option(
        "--config", "-c", exists=True, dir_okay=False, envvar="FLASHMM_CONFIG", help=help
    )


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


@app.command()
def replay(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="Recorded feed(s), replayed in order."
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="CSV file to write (default: stdout).")
    ] = None,
    fmt: FormatOption = "auto",
    tick_size: TickSizeOption = None,
    lot_size: LotSizeOption = None,
    market: Annotated[
        str | None, typer.Option(help="Market to replay from venue frames (default: first seen).")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Model file (default: the packaged model).")
    ] = None,
    progress: ProgressOption = True,
) -> None:
    """Run a recorded feed through codec, book, features, model and quoting; write CSV.

    One row per applied book update: recv_ns, sequence, best bid/ask and sizes, mid,
    predicted direction and confidence, expected move (bps) and the proposed quotes.
    """
    from flashmm._core.model import Model, ModelFileError
    from flashmm.backtest.replay import FeedFormat, ReplayError
    from flashmm.backtest.replay import replay as run_replay

    try:
        feed_format = FeedFormat(fmt)
    except ValueError:
        raise fail(f"--format must be one of: {', '.join(f.value for f in FeedFormat)}") from None
    for name, value in (("--tick-size", tick_size), ("--lot-size", lot_size)):
        if value is not None and not value > 0:
            raise fail(f"{name} must be a positive number, got {value}")
    try:
        loaded = Model.load(model) if model is not None else Model.load_default()
    except ModelFileError as exc:
        raise fail(str(exc)) from None

    out = output.open("w", newline="") if output is not None else sys.stdout
    started = time.perf_counter()
    try:
        with file_progress("replay", list(files), progress) as on_progress:
            report = run_replay(
                list(files),
                out,
                fmt=feed_format,
                tick_size=tick_size,
                lot_size=lot_size,
                market=market,
                model=loaded,
                on_progress=on_progress,
            )
    except ReplayError as exc:
        raise fail(str(exc)) from None
    finally:
        if output is not None:
            out.close()
    elapsed = time.perf_counter() - started

    for bad in report.first_bad_lines:
        err.print(f"[yellow]skipped[/] {escape(str(bad))}")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items()))
    err.print(
        f"{report.market}: tick {report.tick_size:g}, lot {report.lot_size:g}; "
        f"{report.rows} rows, {report.trades} trades, book statuses: {statuses or 'none'}; "
        f"{report.bad_lines} unreadable lines skipped; {elapsed:.2f} s",
        markup=False,
    )
    if report.other_markets:
        others = ", ".join(f"{k} ({v})" for k, v in report.other_markets.most_common())
        err.print(f"events of other markets ignored: {others}", markup=False)


@app.command()
def sim(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", exists=True, dir_okay=False, help="TOML file over the defaults."
        ),
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write {pid, urls} here as JSON once every socket listens."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    market_data_port: Annotated[
        int | None, typer.Option(help="Port of WS /websocket (0: any free port).")
    ] = None,
    order_entry_port: Annotated[
        int | None, typer.Option(help="Port of REST /v1 and WS /v1/stream (0: any free port).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the local venue: market data, order entry, matching, market flow and faults."""
    import asyncio
    import logging
    import signal

    import msgspec
    import uvloop

    from flashmm._logging import configure_logging
    from flashmm._readyfile import serving_ready_file
    from flashmm.venue.sim.config import SimConfigError, load_config
    from flashmm.venue.sim.server import SimServer

    if not isinstance(logging.getLevelName(log_level.upper()), int):
        raise fail(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    configure_logging(log_level, "text")
    try:
        cfg = load_config(config)
        overrides = {
            k: v
            for k, v in (
                ("host", host),
                ("market_data_port", market_data_port),
                ("order_entry_port", order_entry_port),
            )
            if v is not None
        }
        if overrides:
            server = msgspec.structs.replace(cfg.server, **overrides)
            cfg = msgspec.structs.replace(cfg, server=server)
    except SimConfigError as exc:
        raise fail(str(exc)) from None

    async def serve() -> None:
        sim_server = SimServer(cfg)
        try:
            urls = await sim_server.start()
        except (SimConfigError, OSError, ValueError) as exc:
            await sim_server.stop()
            raise fail(str(exc)) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with serving_ready_file(ready_file, sim_server.ready_payload()):
            for name, url in urls.items():
                err.print(f"{name:12s} {url}", highlight=False)
            try:
                await sim_server.wait(stop)
            finally:
                await sim_server.stop()

    uvloop.run(serve())


@app.command()
def run(
    config: Annotated[
        Path | None,
        _config_option("Engine TOML file over the defaults (FLASHMM_* variables override both)."),
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write {pid, urls} here as JSON once the engine quotes."),
    ] = None,
    venue_ready_file: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="Take the venue URLs from `flashmm sim`'s ready file (waits up to 30 s for it).",
        ),
    ] = None,
) -> None:
    """Run the trading engine: feed, quoting loop, orders, portfolio, risk and journal."""
    import asyncio
    import json
    import signal

    import msgspec
    import uvloop

    from flashmm._logging import configure_logging
    from flashmm._readyfile import serving_ready_file
    from flashmm.config import ConfigError, load_config
    from flashmm.engine.engine import Engine, EngineError
    from flashmm.engine.journal import JournalError
    from flashmm.state.publisher import StatePublisherError
    from flashmm.state.valkey import EmbeddedValkey, EmbeddedValkeyError
    from flashmm.venue.gateway import GatewayError

    try:
        cfg = load_config(config)
        if venue_ready_file is not None:
            deadline = time.monotonic() + 30.0
            while not venue_ready_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # the simulator started alongside is still starting
            try:
                urls = json.loads(venue_ready_file.read_text(encoding="utf-8"))["urls"]
                venue = msgspec.structs.replace(
                    cfg.venue,
                    market_data_urls=[urls["market_data"]],
                    rest_url=urls["order_entry"],
                    stream_url=urls["stream"],
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{venue_ready_file}: not a simulator ready file ({exc!r})"
                ) from None
            cfg = msgspec.structs.replace(cfg, venue=venue)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    configure_logging(cfg.engine.log_level, cfg.engine.log_format)

    async def serve(redis_url: str) -> None:
        engine = Engine(cfg, redis_url=redis_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await engine.start()
        except (EngineError, JournalError, GatewayError, StatePublisherError, OSError) as exc:
            await engine.stop()
            raise fail(str(exc)) from None
        with serving_ready_file(ready_file, engine.ready_payload()):
            try:
                await stop.wait()
            finally:
                await engine.stop()

    # No Redis configured: an embedded one in the run directory, for this process's life
    # (its URL file there tells the sidecar and the CLI where it is).
    embedded: EmbeddedValkey | None = None
    redis_url = cfg.state.redis_url
    if not redis_url:
        embedded = EmbeddedValkey(cfg.state.run_dir)
        try:
            redis_url = embedded.start()
        except EmbeddedValkeyError as exc:
            raise fail(str(exc)) from None
    try:
        uvloop.run(serve(redis_url))
    finally:
        if embedded is not None:
            embedded.stop()


@app.command()
def demo(
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds of trading and print the summary."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the API (0: any free port).")] = 8000,
    run_dir: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help="Configs, logs, ready files and journal; kept afterwards, emptied next time.",
        ),
    ] = Path(".flashmm-demo"),
) -> None:
    """Run the whole system here: Valkey, simulator, engine and API; Ctrl-C stops it all."""
    from flashmm.demo import DemoError, DemoSettings, run_demo

    try:
        settings = DemoSettings(run_dir=str(run_dir), api_port=port, duration_s=duration)
        code = run_demo(settings, out=out, err=err)
    except DemoError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)


@app.command()
def api(
    config: Annotated[
        Path | None,
        _config_option("The engine's TOML file: the sidecar reads its [api] and [state] sections."),
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write {pid, urls} here as JSON once the API listens."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on ([api] host).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on ([api] port; 0: any free port).")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Redis the engine publishes to (default: [state] redis_url, else the "
            "embedded server's <run_dir>/redis.url)."
        ),
    ] = None,
) -> None:
    """Serve the REST + WebSocket API over the engine's state (needs a JWT secret)."""
    from flashmm._logging import configure_logging
    from flashmm.api import ApiStartError, InsecureSecret, InvalidRateLimit, serve
    from flashmm.config import ConfigError, load_config
    from flashmm.state.valkey import read_url_file

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if port is not None and not 0 <= port <= 65535:
        raise fail(f"--port must be within 0..65535, got {port}")
    url = redis_url or cfg.state.redis_url or read_url_file(cfg.state.run_dir)
    if url is None:
        raise fail(
            f"no Redis to read: pass --redis-url, set [state] redis_url, or start the engine "
            f"first (its embedded server writes {cfg.state.run_dir}/redis.url)"
        )
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise fail(f"--redis-url must be a redis:// URL, got {url!r}")
    configure_logging(cfg.engine.log_level, cfg.engine.log_format)
    try:
        serve(cfg, url, host=host, port=port, ready_file=ready_file)
    except (InsecureSecret, InvalidRateLimit, ApiStartError) as exc:
        raise fail(str(exc)) from None


@app.command()
def token(
    scope: Annotated[str, typer.Option(help="read (monitoring) or admin (control too).")],
    subject: Annotated[
        str, typer.Option(help="Who the token speaks for; it appears in the audit log.")
    ] = "operator",
    ttl: Annotated[
        int | None, typer.Option(help="Lifetime in seconds (default: [api] token_ttl_s).")
    ] = None,
    config: Annotated[
        Path | None,
        _config_option(
            "The engine's TOML file (the secret is best kept in FLASHMM_API__JWT_SECRET)."
        ),
    ] = None,
) -> None:
    """Print a bearer token for the API, signed with the configured JWT secret."""
    from flashmm.api import InsecureSecret, mint_token
    from flashmm.config import ConfigError, load_config

    if scope not in ("read", "admin"):
        raise fail(f"--scope must be read or admin, got {scope!r}")
    try:
        cfg = load_config(config)
        minted = mint_token(
            cfg.api.jwt_secret,
            scope,  # type: ignore[arg-type]
            subject,
            cfg.api.token_ttl_s if ttl is None else ttl,
            cfg.api.jwt_algorithm,
        )
    except (ConfigError, InsecureSecret, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(minted)


def main() -> None:
    app()
