"""``flashmm demo``: Valkey, simulator, engine and sidecar on one machine, under one supervisor.

The supervisor starts an embedded Valkey server, then ``flashmm sim``, ``flashmm run`` and
``flashmm api`` as child processes, each with its own ready file and log file in the run
directory. Once all are ready it prints the API docs URL and a fresh admin token, shows a
live status line read from Redis, and on Ctrl-C, SIGTERM or the end of ``--duration`` stops
the children in reverse order (sidecar, engine, simulator), then Valkey, and prints a
summary built from the engine's journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

import msgspec
import redis
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flashmm._process import die_with_parent
from flashmm.engine.journal import Journal, JournalError
from flashmm.engine.portfolio import Portfolio, PortfolioMarket
from flashmm.state.keys import Keys
from flashmm.state.schema import (
    EngineState,
    MarketSnapshot,
    SchemaMismatch,
    decode_engine_state,
    decode_snapshot,
)
from flashmm.state.valkey import EmbeddedValkey, EmbeddedValkeyError
from flashmm.venue.sim.config import MarketConfig as SimMarket
from flashmm.venue.sim.config import default_config as default_sim_config

__all__ = [
    "DEMO_MARKETS",
    "DEMO_TAKER_RATE_PER_S",
    "MARKER",
    "ChildProcess",
    "Demo",
    "DemoError",
    "DemoSettings",
    "MarketSummary",
    "RunDirError",
    "StatusReader",
    "child_env",
    "claimed_run_dir",
    "demo_sim_markets",
    "engine_document",
    "run_demo",
    "sim_document",
    "status_line",
    "summarize_journal",
    "summary_table",
    "toml_document",
]

DEMO_MARKETS: Final = ("BTC/USDT", "SEI/USDC")
"""The replay of the packaged real BTC/USDT sample, and the synthetic thin SEI/USDC market."""

DEMO_TAKER_RATE_PER_S: Final = 1.0
"""Baseline market orders per second of the synthetic market (the simulator's default is
0.2): the book stays as thin, but a visitor sees fills within seconds, not minutes."""

MARKER: Final = ".flashmm-demo"
"""Marks a directory as a demo run directory (and is locked while a demo uses it)."""
JOURNAL: Final = "journal.sqlite3"
# Every file a demo writes; the next demo in the same directory removes them first.
RUN_FILES: Final = (
    "sim.toml",
    "engine.toml",
    "sim.log",
    "engine.log",
    "api.log",
    "sim.ready.json",
    "engine.ready.json",
    "api.ready.json",
    JOURNAL,
    f"{JOURNAL}-wal",
    f"{JOURNAL}-shm",
    "valkey.log",
    "redis.url",
)
_COMMANDS: Final = {"sim": "sim", "engine": "run", "api": "api"}
"""The ``flashmm`` command of each child."""
_LOG_TAIL_LINES: Final = 20
_PLAIN_STATUS_EVERY_S: Final = 5.0  # off a terminal, a status line this often, not 2/s


class DemoError(RuntimeError):
    """The demo cannot start, or one of its processes failed; the message says which and why."""


class RunDirError(DemoError):
    """The run directory cannot be used (not a demo's, or another demo is using it)."""


class DemoSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What ``flashmm demo`` runs and how long it waits."""

    run_dir: str = ".flashmm-demo"
    """Configs, logs, ready files and journal; kept after the demo, emptied by the next one."""
    host: str = "127.0.0.1"
    """Where every process listens: this machine only."""
    api_port: int = 8000
    """The sidecar's port (0: any free port)."""
    duration_s: float | None = None
    """Stop this long after everything is ready; None: on Ctrl-C or SIGTERM only."""
    ready_timeout_s: float = 120.0
    """How long the start may take until all are ready (a cold start compiles the kernels)."""
    stop_timeout_s: float = 15.0
    """How long each process may take to stop after SIGTERM before it is killed."""
    refresh_hz: float = 2.0
    """Status line refreshes per second on a terminal."""
    token_ttl_s: int = 86_400
    """Lifetime of the printed admin token."""

    def __post_init__(self) -> None:
        if not 0 <= self.api_port <= 65535:
            raise DemoError(f"--port must be within 0..65535, got {self.api_port}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise DemoError(f"--duration must be > 0 seconds, got {self.duration_s}")
        for name in ("ready_timeout_s", "stop_timeout_s", "refresh_hz", "token_ttl_s"):
            if not getattr(self, name) > 0:
                raise DemoError(f"{name} must be > 0, got {getattr(self, name)}")


class MarketSummary(msgspec.Struct, kw_only=True):
    """One market at the end of a demo, from the engine's journal."""

    market_id: str
    fills: int
    volume: float
    """Traded quote notional."""
    position: float
    """Base units, signed."""
    realized_pnl: float
    fees: float
    net_pnl: float | None
    """Realized + unrealized - fees at the last mid seen; None without a mid."""


# ---------------------------------------------------------------------------- configs
def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_document(data: Mapping[str, Any]) -> str:
    """``data`` as TOML: tables as ``[name]``, lists of tables as ``[[name]]``."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(f"\n[{_toml_key(key)}]")
            tables.extend(
                f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
            )
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"\n[[{_toml_key(key)}]]")
                tables.extend(
                    f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items() if v is not None
                )
        elif value is not None:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join([*lines, *tables]).lstrip("\n") + "\n"


def demo_sim_markets() -> list[SimMarket]:
    """The simulator's definitions of :data:`DEMO_MARKETS`, with a busier synthetic taker."""
    by_id = {m.market_id: m for m in default_sim_config().markets}
    markets = [by_id[m] for m in DEMO_MARKETS]
    return [
        msgspec.structs.replace(
            m,
            synthetic=msgspec.structs.replace(
                m.synthetic, market_base_rate_per_s=DEMO_TAKER_RATE_PER_S
            ),
        )
        if m.source == "synthetic"
        else m
        for m in markets
    ]


def sim_document() -> str:
    """The simulator's TOML: only the demo's markets (every other section stays default)."""
    markets = [msgspec.to_builtins(m) for m in demo_sim_markets()]
    return "# written by `flashmm demo`\n" + toml_document({"markets": markets})


def engine_document(run_dir: Path, redis_url: str, host: str, api_port: int) -> str:
    """The engine's and sidecar's TOML: both markets, journal in the run dir, ports free."""
    data = {
        "engine": {
            "journal": str(run_dir / JOURNAL),
            "metrics_host": host,
            "metrics_port": 0,
            "log_format": "text",  # people read these logs with `tail`
        },
        "state": {"redis_url": redis_url},
        "api": {"host": host, "port": api_port},
        "markets": [{"market_id": m} for m in DEMO_MARKETS],
    }
    return "# written by `flashmm demo`\n" + toml_document(data)


# ---------------------------------------------------------------------------- run dir
@contextlib.contextmanager
def claimed_run_dir(path: Path) -> Iterator[Path]:
    """Create or reuse ``path`` as a run directory, locked for this demo; yields it absolute.

    A directory that holds anything but is not marked as a demo's is refused, so that a
    mistyped ``--run-dir`` never loses a user's files; a demo's own files are removed.
    """
    path = path.expanduser().absolute()
    marker = path / MARKER
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not marker.exists() and any(path.iterdir()):
            raise RunDirError(
                f"{path} is not empty and not a demo run directory: "
                "pass --run-dir with a new or empty directory"
            )
        lock = marker.open("a")
    except OSError as exc:
        raise RunDirError(f"{path}: cannot use it as the run directory ({exc})") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"another flashmm demo is running in {path}: stop it, or pass another --run-dir"
            ) from None
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        yield path
    finally:
        lock.close()  # releases the lock


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise DemoError(
                f"port {port} on {host} is in use: pass --port 0 for any free port, "
                "or another --port"
            ) from None


# ---------------------------------------------------------------------------- children
class ChildProcess:
    """One ``python -m flashmm <command> <options> --ready-file ...`` child, with its log file."""

    def __init__(self, name: str, run_dir: Path, options: Mapping[str, object]) -> None:
        self.name = name
        self.log_path = run_dir / f"{name}.log"
        self.ready_path = run_dir / f"{name}.ready.json"
        command = _COMMANDS[name]
        flat = [str(x) for item in options.items() for x in item]
        self.args = [sys.executable, "-m", "flashmm", command, *flat]
        self.args += ["--ready-file", str(self.ready_path)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None

    def start(self, env: Mapping[str, str]) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.log_path.parent,
                # the kernel SIGTERMs it should the demo die, even by SIGKILL
                preexec_fn=die_with_parent(),
                # Its own process group: a terminal's Ctrl-C reaches the demo only, which
                # then stops the children in order.
                process_group=0,
            )

    def exit_code(self) -> int | None:
        """None while it runs (or before it started)."""
        return self.proc.poll() if self.proc is not None else None

    def check_ready(self) -> bool:
        """Whether its ready file is there; reads it once it is."""
        if self.ready is None and self.ready_path.exists():
            try:
                payload = json.loads(self.ready_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False  # written atomically, so only a replaced file gets here
            if isinstance(payload, dict):
                self.ready = payload
        return self.ready is not None

    def url(self, name: str) -> str | None:
        urls = (self.ready or {}).get("urls", {})
        value = urls.get(name) if isinstance(urls, dict) else None
        return value if isinstance(value, str) else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        tail = text.splitlines()[-lines:]
        return "\n".join(tail) if tail else "(empty log)"

    def failure(self, what: str) -> DemoError:
        return DemoError(f"{self.name} {what}; the end of {self.log_path}:\n{self.log_tail()}")

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def wait(self, timeout_s: float) -> bool:
        """Whether it has exited within ``timeout_s``."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True


def child_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` without ``FLASHMM_*`` variables (the demo is self-contained), plus ``extra``."""
    env = {k: v for k, v in base.items() if not k.startswith("FLASHMM_")}
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file as they happen
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------- status
class StatusReader:
    """The engine's latest state and market snapshots, read straight from Redis."""

    def __init__(self, redis_url: str, markets: Sequence[str], keys: Keys | None = None) -> None:
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        keys = keys or Keys()
        self._keys = [keys.engine, *(keys.snapshot(m) for m in markets)]
        self.markets = list(markets)
        self.engine: EngineState | None = None
        self.snapshots: dict[str, MarketSnapshot] = {}
        self.problem = "waiting for the engine's first state in Redis"

    def refresh(self) -> None:
        """Read once; keeps the last good state and says in ``problem`` what went wrong."""
        try:
            values = self._redis.mget(self._keys)
        except redis.RedisError as exc:
            self.problem = f"Redis unreachable ({exc})"
            return
        raw_engine, *raw_snapshots = values
        try:
            if raw_engine is not None:
                self.engine = decode_engine_state(raw_engine)
            for market, raw in zip(self.markets, raw_snapshots, strict=True):
                if raw is not None:
                    self.snapshots[market] = decode_snapshot(raw)
        except (SchemaMismatch, msgspec.DecodeError) as exc:
            self.problem = f"unreadable engine state ({exc})"
            return
        self.problem = "" if self.engine is not None else self.problem

    def close(self) -> None:
        self._redis.close()


def _price(value: float | None) -> str:
    return "-" if value is None else f"{value:.10g}"


def status_line(reader: StatusReader, elapsed_s: float, now_ns: int) -> Text:
    """One line: risk state, net PnL, fills, and per market inventory and our quote."""
    line = Text(f"{elapsed_s:6.0f}s ", style="dim")
    state = reader.engine
    if state is None:
        return line.append(reader.problem, style="yellow")
    age_s = (now_ns - state.heartbeat_ns) / 1e9
    risk_style = "green" if state.risk.state == "active" else "bold yellow"
    line.append(f"{state.risk.state:<9}", style=risk_style)
    pnl = state.portfolio.net_pnl
    line.append(" PnL ").append(f"{pnl:+.4f}", style="green" if pnl >= 0 else "red")
    line.append(f"  fills {state.counters.fills}  orders {state.counters.orders_placed}")
    for market in reader.markets:
        snap = reader.snapshots.get(market)
        if snap is None:
            continue
        quote = snap.quote
        bid = _price(quote.bid_price if quote else None)
        ask = _price(quote.ask_price if quote else None)
        line.append(f" | {market} ", style="bold")
        line.append(f"inv {snap.position.position:+.6g}  {bid} x {ask}  fills {snap.fills}")
    if reader.problem:
        line.append(f"  ({reader.problem})", style="yellow")
    elif age_s > 3.0:
        line.append(f"  (engine silent for {age_s:.0f} s)", style="yellow")
    return line


# ---------------------------------------------------------------------------- summary
def summarize_journal(
    journal_path: Path, last_mids: Mapping[str, float | None]
) -> list[MarketSummary]:
    """Fills, volume, position and PnL per demo market, replayed from the engine's journal."""
    specs = {m.market_id: m for m in demo_sim_markets()}
    markets = [
        PortfolioMarket(
            market_id=m, tick_size=float(specs[m].tick_size), lot_size=float(specs[m].lot_size)
        )
        for m in DEMO_MARKETS
    ]
    portfolio = Portfolio(markets)
    with Journal(journal_path) as journal:
        state = journal.load()
    for fill in state.fills:
        portfolio.apply_fill(fill)
    now_ns = time.time_ns()
    summaries = []
    for market in markets:
        mid = last_mids.get(market.market_id)
        if mid is not None:
            portfolio.mark(market.market_id, mid / market.tick_size, now_ns)
        pos = portfolio.position(market.market_id)
        summaries.append(
            MarketSummary(
                market_id=market.market_id,
                fills=pos.fills,
                volume=pos.volume,
                position=pos.position,
                realized_pnl=pos.realized_pnl,
                fees=pos.fees,
                net_pnl=pos.net_pnl if mid is not None else None,
            )
        )
    return summaries


def summary_table(summaries: Sequence[MarketSummary], risk_state: str, elapsed_s: float) -> Table:
    """The end-of-demo table: one row per market."""
    table = Table(
        title=f"FlashMM demo: {elapsed_s:.0f} s, risk state at the end: {risk_state}",
        title_justify="left",
    )
    for column in ("market", "fills", "volume", "position", "realized", "fees", "net PnL"):
        table.add_column(column, justify="left" if column == "market" else "right")
    for s in summaries:
        net = "-" if s.net_pnl is None else f"{s.net_pnl:+.6f}"
        table.add_row(
            s.market_id,
            str(s.fills),
            f"{s.volume:.2f}",
            f"{s.position:+.8g}",
            f"{s.realized_pnl:+.6f}",
            f"{s.fees:.6f}",
            net,
        )
    return table


# ---------------------------------------------------------------------------- supervisor
class _Stop(Exception):
    """SIGINT or SIGTERM arrived while the demo was starting."""


class Demo:
    """Starts, watches and stops the demo's processes; :meth:`run` returns the exit code."""

    def __init__(self, settings: DemoSettings, out: Console, err: Console) -> None:
        self.settings = settings
        self.out = out
        self.err = err
        self.signals = 0
        self.secret = secrets.token_urlsafe(48)
        """The sidecar's JWT secret: made up per demo, never written to disk."""
        self.valkey: EmbeddedValkey | None = None
        self.sim: ChildProcess | None = None
        self.engine: ChildProcess | None = None
        self.api: ChildProcess | None = None
        self.reader: StatusReader | None = None

    @property
    def children(self) -> list[ChildProcess]:
        """The started children, in start order."""
        return [c for c in (self.sim, self.engine, self.api) if c is not None]

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1

    @contextlib.contextmanager
    def _signals_caught(self) -> Iterator[None]:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        settings = self.settings
        with claimed_run_dir(Path(settings.run_dir)) as run_dir, self._signals_caught():
            _check_port_free(settings.host, settings.api_port)
            started = time.monotonic()
            code = 0
            try:
                self._start(run_dir)
                started = time.monotonic()
                self._announce(run_dir)
                code = self._watch(started)
            except _Stop:
                self.err.print("stopped before the demo was ready")
                code = 130
            except DemoError as exc:
                self.err.print(f"[bold red]error:[/] {escape(str(exc))}")
                code = 1
            finally:
                self._stop_all()
            if self.engine is not None:
                self._print_summary(run_dir, time.monotonic() - started)
            return code

    def _start(self, run_dir: Path) -> None:
        s = self.settings
        self.err.print(f"run directory {run_dir}")
        self.valkey = EmbeddedValkey(run_dir, host=s.host)
        try:
            redis_url = self.valkey.start()
        except EmbeddedValkeyError as exc:
            raise DemoError(str(exc)) from None
        (run_dir / "sim.toml").write_text(sim_document(), encoding="utf-8")
        engine_toml = run_dir / "engine.toml"
        engine_toml.write_text(
            engine_document(run_dir, redis_url, s.host, s.api_port), encoding="utf-8"
        )
        sim = ChildProcess("sim", run_dir, {"--config": run_dir / "sim.toml", "--host": s.host})
        engine = ChildProcess(
            "engine", run_dir, {"--config": engine_toml, "--venue-ready-file": sim.ready_path}
        )
        api = ChildProcess(
            "api",
            run_dir,
            {"--config": engine_toml, "--redis-url": redis_url, "--port": s.api_port},
        )
        self.sim, self.engine, self.api = sim, engine, api
        # Started together: the engine waits for the simulator's ready file by itself.
        base = child_env(os.environ)
        sim.start(base)
        engine.start(base)
        # The secret goes to the sidecar only, by environment, never on a command line.
        api.start(child_env(os.environ, {"FLASHMM_API__JWT_SECRET": self.secret}))
        self.reader = StatusReader(redis_url, DEMO_MARKETS)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until every child wrote its ready file and the engine's state is in Redis."""
        assert self.engine is not None and self.reader is not None
        deadline = time.monotonic() + self.settings.ready_timeout_s
        with self._status_display() as show:
            while True:
                if self.signals:
                    raise _Stop
                for child in self.children:
                    code = child.exit_code()
                    if code is not None:
                        raise child.failure(f"exited with code {code} while starting")
                pending = [c for c in self.children if not c.check_ready()]
                waiting = [c.name for c in pending]
                if self.engine.ready is not None:
                    # the API answers about the engine only once its state is in Redis
                    self.reader.refresh()
                    if self.reader.engine is None:
                        pending.append(self.engine)
                        waiting.append("the engine's first state in Redis")
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise pending[0].failure(
                        f"was not ready within {self.settings.ready_timeout_s:.0f} s "
                        f"(waiting for: {', '.join(waiting)})"
                    )
                show(Text(f"starting: waiting for {', '.join(waiting)}"))
                time.sleep(0.1)

    def _announce(self, run_dir: Path) -> None:
        from flashmm.api import mint_token

        assert self.api is not None
        docs = self.api.url("docs") or f"http://{self.settings.host}:{self.settings.api_port}/docs"
        token = mint_token(self.secret, "admin", "demo", self.settings.token_ttl_s)
        out = self.out
        out.print("FlashMM demo is running", style="bold")
        out.print(f"  API docs     {docs}")
        out.print(f"  admin token  {token}")
        out.print(
            f"  markets      {DEMO_MARKETS[0]} (real data replayed), "
            f"{DEMO_MARKETS[1]} (synthetic thin market)"
        )
        out.print(f"  logs         {run_dir}/{{sim,engine,api}}.log")
        how_long = (
            f"for {self.settings.duration_s:g} s" if self.settings.duration_s else "until Ctrl-C"
        )
        out.print(f"Running {how_long}; Ctrl-C stops everything.")

    def _watch(self, started: float) -> int:
        """Show the status line until a signal, the duration's end or a child's death."""
        assert self.reader is not None
        duration = self.settings.duration_s
        period = 1.0 / self.settings.refresh_hz
        with self._status_display() as show:
            while not self.signals:
                elapsed = time.monotonic() - started
                if duration is not None and elapsed >= duration:
                    break
                for child in self.children:
                    code = child.exit_code()
                    if code is not None:
                        raise child.failure(f"stopped on its own (exit code {code})")
                self.reader.refresh()
                show(status_line(self.reader, elapsed, time.time_ns()))
                time.sleep(period)
        self.reader.refresh()  # the last state, for the summary
        return 0

    @contextlib.contextmanager
    def _status_display(self) -> Iterator[Callable[[Text], None]]:
        """A callable that shows a status line: in place on a terminal, else now and then."""
        if self.err.is_terminal:
            with Live(console=self.err, auto_refresh=False, transient=True) as live:
                yield lambda text: live.update(text, refresh=True)
            return
        last = -_PLAIN_STATUS_EVERY_S

        def show(text: Text) -> None:
            nonlocal last
            if time.monotonic() - last >= _PLAIN_STATUS_EVERY_S:
                last = time.monotonic()
                self.err.print(text)

        yield show

    # ------------------------------------------------------------------ stop
    def _stop_all(self) -> None:
        """SIGTERM each child in reverse start order and wait; SIGKILL stragglers; Valkey last."""
        timeout = self.settings.stop_timeout_s
        kill_at = self.signals + 1  # one more Ctrl-C while stopping means: do not wait, kill
        for child in reversed(self.children):
            if child.exit_code() is not None or child.proc is None:
                continue
            self.err.print(f"stopping {child.name}")
            child.terminate()
            deadline = time.monotonic() + timeout
            while not child.wait(0.1):
                if time.monotonic() > deadline or self.signals >= kill_at:
                    self.err.print(f"[yellow]{child.name} did not stop in time: killed[/]")
                    child.kill()
                    child.wait(timeout)
                    break
            code = child.exit_code()
            if code not in (0, None, -signal.SIGKILL):
                self.err.print(
                    f"[yellow]{child.name} stopped with exit code {code}; see {child.log_path}[/]"
                )
        if self.reader is not None:
            self.reader.close()
        if self.valkey is not None:
            self.valkey.stop()

    def _print_summary(self, run_dir: Path, elapsed_s: float) -> None:
        journal = run_dir / JOURNAL
        if not journal.exists():
            return
        mids: dict[str, float | None] = {}
        risk_state = "unknown"
        if self.reader is not None:
            mids = {m: s.mid for m, s in self.reader.snapshots.items()}
            if self.reader.engine is not None:
                risk_state = self.reader.engine.risk.state
        try:
            summaries = summarize_journal(journal, mids)
        except JournalError as exc:
            self.err.print(f"[yellow]no summary: {escape(str(exc))}[/]")
            return
        self.out.print(summary_table(summaries, risk_state, elapsed_s))
        self.out.print(f"journal, logs and configs are kept in {run_dir}")


def run_demo(settings: DemoSettings, out: Console, err: Console) -> int:
    """Run the demo to its end; returns the process exit code (0: ran and stopped cleanly)."""
    return Demo(settings, out, err).run()
