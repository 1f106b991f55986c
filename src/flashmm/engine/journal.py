"""The engine's write-ahead journal of orders, fills, execution-stream position and risk state.

Every order event and fill is written here before anything else hears of it; a restarted
engine rebuilds its orders, fills and last execution-stream seq with :meth:`Journal.load`.

Durability: one SQLite connection in WAL mode with ``synchronous=NORMAL``. A call returns
after its transaction is committed to the write-ahead log, so it survives the process being
killed (even with SIGKILL); only an operating-system crash or power loss can take back the
last few transactions, which the engine recovers by reconciling with the venue. Each call is
one transaction of a few statements and costs tens of µs, cheap enough for the event-loop
thread between ticks.

The orders of one decision, written in a :meth:`Journal.batch` just before they are sent,
take a shorter way: the batch is one appended frame in the order log next to the database
(``<journal>-orderlog``: one ``write``, as durable as a WAL commit), and :meth:`Journal.flush`
copies the log into the database after the orders are on their way. Every other write, and
opening the journal, flushes the log first, so the database never holds a record newer than
one in the log. SQLite's statements take some 0.3 ms on a machine that idled since the last
decision; one ``write`` takes a tenth of that.

The file is opened in exclusive locking mode: while an engine has it open, no other process
can open it, so two engines can never interleave their records in one journal.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from flashmm.engine.records import TERMINAL_STATES, Fill, Order, OrderState, Side

__all__ = ["Journal", "JournalError", "JournalRecordError", "JournalState", "RiskRecord"]

log = logging.getLogger("flashmm.journal")

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the files this code writes."""
APPLICATION_ID = 0x464C4D4A  # "FLMJ": tells a FlashMM journal from any other SQLite file
MIN_SQLITE = (3, 37, 0)  # STRICT tables
MEMORY = ":memory:"
ORDER_LOG_SUFFIX = "-orderlog"
"""The order log is the journal's path with this appended."""

# An order-log frame: payload length and CRC-32, then the payload (MessagePack: a list of
# order rows). A frame cut short or failing its CRC ends the log (an OS crash mid-write).
_FRAME = struct.Struct("<II")
_encode_rows = msgspec.msgpack.Encoder().encode
_decode_rows = msgspec.msgpack.Decoder(list[tuple[Any, ...]]).decode

_SCHEMA = (
    """CREATE TABLE progress (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        session INTEGER NOT NULL,
        stream_seq INTEGER
    ) STRICT""",
    "INSERT INTO progress (id, session, stream_seq) VALUES (1, 0, NULL)",
    """CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL UNIQUE,
        market_id TEXT NOT NULL,
        side INTEGER NOT NULL CHECK (side IN (1, -1)),
        price_ticks INTEGER NOT NULL,
        size_lots INTEGER NOT NULL,
        state TEXT NOT NULL,
        order_id TEXT,
        filled_lots INTEGER NOT NULL,
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        reason TEXT NOT NULL,
        own_cancel INTEGER NOT NULL CHECK (own_cancel IN (0, 1))
    ) STRICT""",
    """CREATE TABLE fills (
        id INTEGER PRIMARY KEY,
        trade_id TEXT NOT NULL,
        client_order_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        market_id TEXT NOT NULL,
        side INTEGER NOT NULL CHECK (side IN (1, -1)),
        price_ticks INTEGER NOT NULL,
        size_lots INTEGER NOT NULL,
        fee TEXT NOT NULL,
        liquidity TEXT NOT NULL CHECK (liquidity IN ('maker', 'taker')),
        ts_ns INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        UNIQUE (trade_id, client_order_id)
    ) STRICT""",
    """CREATE TABLE risk (
        id INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        ts_ns INTEGER NOT NULL,
        until_ns INTEGER
    ) STRICT""",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_LOCK_EXCLUSIVE = "PRAGMA locking_mode = EXCLUSIVE"  # held until close: one engine per file
_WAL_MODE = "PRAGMA journal_mode = WAL"
_SYNC_NORMAL = "PRAGMA synchronous = NORMAL"
_GET_APPLICATION_ID = "PRAGMA application_id"
_GET_USER_VERSION = "PRAGMA user_version"
_BEGIN = "BEGIN IMMEDIATE"
_BEGIN_READ = "BEGIN"
_COMMIT = "COMMIT"
_ROLLBACK = "ROLLBACK"
_SAVEPOINT = "SAVEPOINT fill"
_RELEASE = "RELEASE fill"
_ROLLBACK_TO = "ROLLBACK TO fill"
_UPSERT_ORDER = """
    INSERT INTO orders (client_order_id, market_id, side, price_ticks, size_lots, state,
                        order_id, filled_lots, created_ns, updated_ns, reason, own_cancel)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (client_order_id) DO UPDATE SET
        market_id = excluded.market_id, side = excluded.side,
        price_ticks = excluded.price_ticks, size_lots = excluded.size_lots,
        state = excluded.state, order_id = excluded.order_id,
        filled_lots = excluded.filled_lots, created_ns = excluded.created_ns,
        updated_ns = excluded.updated_ns, reason = excluded.reason,
        own_cancel = excluded.own_cancel"""
_INSERT_FILL = """
    INSERT INTO fills (trade_id, client_order_id, order_id, market_id, side, price_ticks,
                       size_lots, fee, liquidity, ts_ns, seq)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (trade_id, client_order_id) DO NOTHING"""
_ADVANCE_SEQ = (
    "UPDATE progress SET stream_seq = ?1 WHERE id = 1 AND (stream_seq IS NULL OR stream_seq < ?1)"
)
_INSERT_RISK = "INSERT INTO risk (state, reason, ts_ns, until_ns) VALUES (?, ?, ?, ?)"
_FILL_EXISTS = "SELECT 1 FROM fills WHERE trade_id = ? AND client_order_id = ?"
_NEXT_SESSION = "UPDATE progress SET session = session + 1 WHERE id = 1"
_SELECT_PROGRESS = "SELECT session, stream_seq FROM progress WHERE id = 1"
_TERMINAL_VALUES = ", ".join(f"'{state.value}'" for state in sorted(TERMINAL_STATES))
_SELECT_ORDERS = f"""
    SELECT client_order_id, market_id, side, price_ticks, size_lots, state, order_id,
           filled_lots, created_ns, updated_ns, reason, own_cancel
    FROM orders WHERE state NOT IN ({_TERMINAL_VALUES}) OR updated_ns >= ? ORDER BY id"""
_SELECT_FILLS = """
    SELECT trade_id, order_id, client_order_id, market_id, side, price_ticks, size_lots, fee,
           liquidity, ts_ns, seq
    FROM fills ORDER BY id"""
_SELECT_LAST_RISK = "SELECT state, reason, ts_ns, until_ns FROM risk ORDER BY id DESC LIMIT 1"
_COUNT_SCHEMA = "SELECT count(*) FROM sqlite_schema"

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# What an operator can do about each SQLite failure, by primary result code.
_HINTS = {
    sqlite3.SQLITE_NOTADB: "it is not an SQLite database: move it aside or choose another path",
    sqlite3.SQLITE_CORRUPT: (
        "it is corrupt: move it aside (with its -wal file), restore a backup or start a new "
        "journal, and reconcile with the venue before trading"
    ),
    sqlite3.SQLITE_BUSY: "another process has it open: stop the other engine using it",
    sqlite3.SQLITE_LOCKED: "another process has it open: stop the other engine using it",
    sqlite3.SQLITE_READONLY: "it cannot be written: check permissions of the file and its folder",
    sqlite3.SQLITE_CANTOPEN: "it cannot be opened: check the path and its permissions",
    sqlite3.SQLITE_PERM: "it cannot be written: check permissions of the file and its folder",
    sqlite3.SQLITE_FULL: "the disk is full: free space, then restart the engine",
    sqlite3.SQLITE_IOERR: "the disk failed: check the disk and the file system",
}


class JournalError(RuntimeError):
    """The journal file cannot be opened, read or written; the message says what to do."""


class JournalRecordError(ValueError):
    """A record the journal refuses (wrong types or values); nothing was written."""


class RiskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One risk-state transition."""

    state: str
    reason: str
    ts_ns: int
    until_ns: int | None = None
    """End of a timed pause (wall-clock ns); None: until changed."""


class JournalState(msgspec.Struct, kw_only=True):
    """What a restarted engine rebuilds from the journal."""

    orders: dict[str, Order]
    """By client order id: every live order and the terminal ones updated recently."""
    fills: list[Fill]
    """Every fill, in journal order."""
    stream_seq: int | None
    """The last execution-stream seq whose effect is journaled; None: none yet."""
    risk: RiskRecord | None
    """The last risk-state transition; None: none yet."""
    session: int
    """How many times the journal has been opened (1 on a new file)."""


class Journal:
    """The engine's journal: one SQLite file in WAL mode, written on the event-loop thread.

    Every ``record_*`` call is one committed transaction when it returns. A ``JournalError``
    from it means the record is not journaled and the transaction was rolled back.
    """

    path: Path | None
    """The journal file; None for an in-memory journal (``":memory:"``, tests only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            need = ".".join(map(str, MIN_SQLITE))
            raise JournalError(
                f"journal {os.fspath(path)}: SQLite {sqlite3.sqlite_version} is too old, "
                f"FlashMM needs {need} or newer: use a Python built with a newer SQLite"
            )
        text = os.fspath(path)
        if not text:
            raise JournalError("journal path is empty: give a file path or ':memory:'")
        self.path = None if text == MEMORY else Path(text)
        self._name = text
        self._closed = False
        self._in_batch = False
        # A batch of plain order records is kept here and appended to the order log as one
        # frame when it ends; None while no such batch is open (or it has turned into a
        # database transaction: see ``_write_through``).
        self._batch_rows: list[tuple[object, ...]] | None = None
        # Rows in the order log that the database does not have yet.
        self._logged: list[tuple[object, ...]] = []
        self._log_fd: int | None = None
        self._log_path = None if self.path is None else Path(text + ORDER_LOG_SUFFIX)
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalError(
                    f"journal {text}: cannot create its folder ({exc}): "
                    "check the path and its permissions"
                ) from exc
        try:
            # timeout=0: a journal held by another engine is refused at once, not waited on.
            self._conn = sqlite3.connect(text, isolation_level=None, timeout=0)
        except sqlite3.Error as exc:
            raise self._error("cannot open it", exc) from exc
        try:
            self._open()
            if self._log_path is not None:
                self._log_fd = self._open_log(self._log_path)
        except BaseException:
            self._closed = True
            self._conn.close()
            raise

    def _open(self) -> None:
        """Lock, switch to WAL, check or create the schema and count the session."""
        conn = self._conn
        try:
            conn.execute(_LOCK_EXCLUSIVE)
            mode = conn.execute(_WAL_MODE).fetchone()[0]
            if self.path is not None and mode != "wal":
                raise JournalError(
                    f"journal {self._name}: SQLite cannot use WAL mode here (got {mode!r}): "
                    "put the journal on a local file system"
                )
            conn.execute(_SYNC_NORMAL)
            conn.execute(_BEGIN)
            self._check_or_create_schema()
            self._replay_order_log()
            conn.execute(_NEXT_SESSION)
            conn.execute(_COMMIT)
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error("cannot open it", exc) from exc
        except BaseException:
            self._rollback()
            raise

    def _replay_order_log(self) -> None:
        """Copy what a previous run left in the order log into the open transaction."""
        if self._log_path is None:
            return
        try:
            data = self._log_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise JournalError(
                f"journal {self._name}: cannot read its order log {self._log_path} ({exc}): "
                "check its permissions"
            ) from exc
        rows, end = _read_frames(data)
        if end < len(data):
            log.warning(
                "journal %s: the last %d bytes of its order log are incomplete (the machine "
                "stopped while writing them) and are ignored; reconciliation with the venue "
                "settles those orders",
                self._name,
                len(data) - end,
            )
        if rows:
            self._conn.executemany(_UPSERT_ORDER, rows)
            log.info(
                "journal %s: %d order records recovered from its order log", self._name, len(rows)
            )

    def _open_log(self, path: Path) -> int:
        """The order log, emptied (its records are in the database now), for appending."""
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        except OSError as exc:
            raise JournalError(
                f"journal {self._name}: cannot open its order log {path} ({exc}): "
                "check the folder's permissions"
            ) from exc

    def _check_or_create_schema(self) -> None:
        conn = self._conn
        app_id = conn.execute(_GET_APPLICATION_ID).fetchone()[0]
        version = conn.execute(_GET_USER_VERSION).fetchone()[0]
        if app_id == 0 and version == 0 and conn.execute(_COUNT_SCHEMA).fetchone()[0] == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            return
        if app_id != APPLICATION_ID:
            raise JournalError(
                f"journal {self._name}: this SQLite file is not a FlashMM journal: "
                "move it aside or choose another path"
            )
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self._name}: written by a newer FlashMM (schema version {version}, "
                f"this one reads {SCHEMA_VERSION}): upgrade FlashMM to use it"
            )
        if version < SCHEMA_VERSION:
            raise JournalError(
                f"journal {self._name}: unknown schema version {version}: the file is damaged; "
                "move it aside and reconcile with the venue"
            )

    def load(self, *, keep_terminal_s: float = 3600.0, now_ns: int | None = None) -> JournalState:
        """Everything a restarted engine needs: orders, fills, stream seq, risk, session.

        Terminal orders last updated more than ``keep_terminal_s`` before ``now_ns``
        (default: the wall clock) are left out; their fills are not.
        """
        if math.isnan(keep_terminal_s) or keep_terminal_s < 0:
            raise ValueError(f"keep_terminal_s must be >= 0 seconds, got {keep_terminal_s}")
        if now_ns is None:
            now_ns = time.time_ns()
        cutoff_ns = _INT64_MIN
        if math.isfinite(keep_terminal_s):
            cutoff_ns = min(max(now_ns - round(keep_terminal_s * 1e9), _INT64_MIN), _INT64_MAX)
        self._write_through()
        conn = self._conn
        try:
            conn.execute(_BEGIN_READ)  # one snapshot across the four reads
            session, stream_seq = conn.execute(_SELECT_PROGRESS).fetchone()
            order_rows = conn.execute(_SELECT_ORDERS, (cutoff_ns,)).fetchall()
            fill_rows = conn.execute(_SELECT_FILLS).fetchall()
            risk_row = conn.execute(_SELECT_LAST_RISK).fetchone()
            conn.execute(_COMMIT)
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error("cannot read it", exc) from exc
        try:
            orders = {row[0]: _order_from_row(row) for row in order_rows}
            fills = [_fill_from_row(row) for row in fill_rows]
        except (ValueError, InvalidOperation) as exc:
            raise JournalError(
                f"journal {self._name}: holds a record this FlashMM cannot read ({exc}): "
                "the file is damaged or from another version; move it aside and reconcile "
                "with the venue"
            ) from exc
        risk = None
        if risk_row is not None:
            state, reason, ts_ns, until_ns = risk_row
            risk = RiskRecord(state=state, reason=reason, ts_ns=ts_ns, until_ns=until_ns)
        return JournalState(
            orders=orders, fills=fills, stream_seq=stream_seq, risk=risk, session=session
        )

    def record_order(self, order: Order, *, seq: int | None = None) -> None:
        """Journal the order's full current state; ``seq`` also advances the stream seq."""
        row = _order_row(order)
        if seq is None and self._batch_rows is not None:
            _check_order_row(row)
            self._batch_rows.append(row)  # logged when the batch ends
            return
        self._write_through()
        conn = self._conn
        try:
            if seq is None or self._in_batch:
                conn.execute(_UPSERT_ORDER, row)  # one statement: its own transaction
                if seq is not None:
                    conn.execute(_ADVANCE_SEQ, (seq,))
                return
            conn.execute(_BEGIN)
            conn.execute(_UPSERT_ORDER, row)
            conn.execute(_ADVANCE_SEQ, (seq,))
            conn.execute(_COMMIT)
        except (sqlite3.Error, OverflowError) as exc:
            self._rollback()
            raise self._error(f"order {order.client_order_id!r} not journaled", exc) from exc
        except BaseException:
            self._rollback()
            raise

    def record_fill(self, fill: Fill, order: Order, *, seq: int | None = None) -> bool:
        """Journal a fill with its order's new state (and ``seq``) in one transaction.

        Returns False, writing nothing, when this (trade_id, client_order_id) is already
        journaled: a fill the venue resent must not be counted twice.
        """
        if fill.client_order_id != order.client_order_id:
            raise JournalRecordError(
                f"fill {fill.trade_id!r} is for order {fill.client_order_id!r}, not "
                f"{order.client_order_id!r}: nothing was journaled"
            )
        fee = fill.fee
        if type(fee) is not Decimal or not fee.is_finite():
            raise JournalRecordError(
                f"fill {fill.trade_id!r}: fee must be a finite Decimal, got {fee!r}: "
                "nothing was journaled"
            )
        fill_row = (
            fill.trade_id,
            fill.client_order_id,
            fill.order_id,
            fill.market_id,
            fill.side,
            fill.price_ticks,
            fill.size_lots,
            str(fee),
            fill.liquidity,
            fill.ts_ns,
            fill.seq,
        )
        order_row = _order_row(order)
        self._write_through()
        conn = self._conn
        # inside a batch a savepoint stands in for the transaction, so a duplicate undoes
        # only this fill
        begin, commit, undo = (
            (_SAVEPOINT, _RELEASE, _ROLLBACK_TO) if self._in_batch else (_BEGIN, _COMMIT, _ROLLBACK)
        )
        try:
            conn.execute(begin)
            if conn.execute(_INSERT_FILL, fill_row).rowcount == 0:
                conn.execute(undo)
                if self._in_batch:
                    conn.execute(_RELEASE)
                return False
            conn.execute(_UPSERT_ORDER, order_row)
            if seq is not None:
                conn.execute(_ADVANCE_SEQ, (seq,))
            conn.execute(commit)
        except (sqlite3.Error, OverflowError) as exc:
            self._rollback()
            raise self._error(f"fill {fill.trade_id!r} not journaled", exc) from exc
        except BaseException:
            self._rollback()
            raise
        return True

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every record inside is journaled at once when the batch ends: the orders of one
        decision cost one write instead of one each. Nested batches join the outer one; an
        exception drops the whole batch and propagates.

        A batch of plain order records (``record_order`` without ``seq``) is one frame
        appended to the order log; anything else inside makes it one database transaction.
        """
        if self._in_batch:
            yield
            return
        if self._closed:
            raise self._error("cannot start a batch", sqlite3.ProgrammingError("closed"))
        if self._log_fd is None:  # in memory: no order log
            self._begin_transaction()
        else:
            self._batch_rows = []
        self._in_batch = True
        try:
            yield
        except BaseException:
            self._in_batch = False
            self._batch_rows = None
            self._rollback()
            raise
        self._in_batch = False
        rows, self._batch_rows = self._batch_rows, None
        if rows is None:  # a database transaction
            try:
                self._conn.execute(_COMMIT)
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error("batch not journaled", exc) from exc
        elif rows:
            self._append_frame(rows)

    @property
    def unflushed(self) -> int:
        """Order records in the order log that the database does not have yet."""
        return len(self._logged)

    def flush(self) -> None:
        """Copy the order log into the database and empty it (a no-op when it is empty, and
        inside a batch, which flushes when it needs to)."""
        if self._logged and not self._in_batch:
            self._copy_log()

    def _copy_log(self) -> None:
        conn = self._conn
        try:
            conn.execute(_BEGIN)
            conn.executemany(_UPSERT_ORDER, self._logged)
            conn.execute(_COMMIT)
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error("order log not copied into the database", exc) from exc
        self._logged.clear()
        # Emptied only after the commit: a crash between the two replays rows the database
        # already has, in the same order, which leaves it as it is.
        try:
            os.ftruncate(self._log_fd, 0)  # type: ignore[arg-type]
        except OSError as exc:
            raise JournalError(
                f"journal {self._name}: cannot empty its order log ({exc}): "
                "check the disk and the file system"
            ) from exc

    def _append_frame(self, rows: list[tuple[object, ...]]) -> None:
        """One frame of ``rows`` at the end of the order log, in one ``write``."""
        try:
            payload = _encode_rows(rows)
        except (TypeError, OverflowError, msgspec.EncodeError) as exc:
            raise JournalRecordError(
                f"batch not journaled: the journal refuses its values ({exc})"
            ) from None
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            written = os.write(self._log_fd, frame)  # type: ignore[arg-type]
        except OSError as exc:
            raise JournalError(
                f"journal {self._name}: batch not journaled: cannot write its order log "
                f"({exc}): check the disk and the file system"
            ) from exc
        if written != len(frame):
            raise JournalError(
                f"journal {self._name}: batch not journaled: the order log took {written} of "
                f"{len(frame)} bytes: the disk is probably full"
            )
        self._logged += rows

    def _write_through(self) -> None:
        """Before a write to the database: flush the order log, and turn an open batch of
        plain order records into a database transaction that starts with them."""
        if self._closed:
            return  # the statement that follows reports it
        if self._logged:
            self._copy_log()
        rows = self._batch_rows
        if rows is None:
            return
        self._batch_rows = None
        self._begin_transaction()
        try:
            self._conn.executemany(_UPSERT_ORDER, rows)
        except (sqlite3.Error, OverflowError) as exc:
            self._rollback()
            raise self._error("batch not journaled", exc) from exc

    def _begin_transaction(self) -> None:
        try:
            self._conn.execute(_BEGIN)
        except sqlite3.Error as exc:
            raise self._error("cannot start a batch", exc) from exc

    def record_stream_seq(self, seq: int) -> None:
        """Advance the stream seq past an event with no order or fill effect."""
        self._write_through()
        try:
            self._conn.execute(_ADVANCE_SEQ, (seq,))
        except (sqlite3.Error, OverflowError) as exc:
            raise self._error(f"stream seq {seq!r} not journaled", exc) from exc

    def record_risk(self, record: RiskRecord) -> None:
        """Journal a risk-state transition (every one is kept; :meth:`load` returns the last)."""
        row = (record.state, record.reason, record.ts_ns, record.until_ns)
        self._write_through()
        try:
            self._conn.execute(_INSERT_RISK, row)
        except (sqlite3.Error, OverflowError) as exc:
            raise self._error(f"risk state {record.state!r} not journaled", exc) from exc

    def fill_exists(self, trade_id: str, client_order_id: str) -> bool:
        """True if this (trade_id, client_order_id) is journaled."""
        try:
            row = self._conn.execute(_FILL_EXISTS, (trade_id, client_order_id)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot read it", exc) from exc
        return row is not None

    def close(self) -> None:
        """Close the file (and release its lock); closing again does nothing."""
        if self._closed:
            return
        try:
            self.flush()  # a clean stop leaves an empty order log
        finally:
            self._closed = True
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                raise self._error("cannot close it", exc) from exc

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _rollback(self) -> None:
        """Undo an open transaction after a failure; a failing rollback leaves it to SQLite."""
        if self._closed:
            return
        try:
            if self._conn.in_transaction:
                self._conn.execute(_ROLLBACK)
        except sqlite3.Error:
            pass  # SQLite rolls back itself when the connection cannot; the caller gets the cause

    def _error(self, doing: str, exc: Exception) -> JournalError | JournalRecordError:
        """The exception to raise for ``exc``, naming the file and what to do."""
        if self._closed:
            return JournalError(f"journal {self._name}: {doing}: the journal is closed")
        # Constraint, binding and range failures: the record is wrong, not the file.
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | OverflowError):
            return JournalRecordError(f"{doing}: the journal refuses its values ({exc})")
        code = getattr(exc, "sqlite_errorcode", None)
        hint = _HINTS.get(code & 0xFF) if code is not None else None
        return JournalError(f"journal {self._name}: {doing}: {exc}" + (f": {hint}" if hint else ""))


def _order_row(order: Order) -> tuple[object, ...]:
    # Side and OrderState are int and str subclasses: SQLite stores their values.
    return (
        order.client_order_id,
        order.market_id,
        order.side,
        order.price_ticks,
        order.size_lots,
        order.state,
        order.order_id,
        order.filled_lots,
        order.created_ns,
        order.updated_ns,
        order.reason,
        order.own_cancel,
    )


def _order_from_row(row: tuple[Any, ...]) -> Order:
    (coid, market, side, price, size, state, order_id, filled, created, updated, reason, own) = row
    return Order(
        client_order_id=coid,
        market_id=market,
        side=Side(side),
        price_ticks=price,
        size_lots=size,
        state=OrderState(state),
        order_id=order_id,
        filled_lots=filled,
        created_ns=created,
        updated_ns=updated,
        reason=reason,
        own_cancel=bool(own),
    )


def _fill_from_row(row: tuple[Any, ...]) -> Fill:
    (trade_id, order_id, coid, market, side, price, size, fee, liquidity, ts_ns, seq) = row
    return Fill(
        trade_id=trade_id,
        order_id=order_id,
        client_order_id=coid,
        market_id=market,
        side=Side(side),
        price_ticks=price,
        size_lots=size,
        fee=Decimal(fee),
        liquidity=liquidity,
        ts_ns=ts_ns,
        seq=seq,
    )


def _read_frames(data: bytes) -> tuple[list[tuple[Any, ...]], int]:
    """The rows of every whole frame at the start of ``data``, and where they end."""
    rows: list[tuple[Any, ...]] = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            rows += _decode_rows(payload)
        except msgspec.DecodeError:
            break
        pos = start + length
    return rows, pos


_INT64 = range(_INT64_MIN, _INT64_MAX + 1)


def _check_order_row(row: tuple[object, ...]) -> None:
    """What SQLite's constraints would refuse, refused before the row reaches the log."""
    (coid, market, side, price, size, state, order_id, filled, created, updated, reason, own) = row
    if not all(isinstance(v, str) for v in (coid, market, state, reason)):
        problem = "client_order_id, market_id, state and reason must be text"
    elif order_id is not None and not isinstance(order_id, str):
        problem = "order_id must be text or None"
    elif side not in (1, -1) or isinstance(side, float):
        problem = f"side must be 1 or -1 (CHECK), got {side!r}"
    elif not all(
        isinstance(v, int) and v in _INT64 for v in (price, size, filled, created, updated)
    ):
        problem = "prices, sizes and times must be integers in the int64 range"
    elif own not in (True, False) or isinstance(own, float):
        problem = f"own_cancel must be a bool, got {own!r}"
    else:
        return
    raise JournalRecordError(
        f"order {coid!r} not journaled: the journal refuses its values ({problem})"
    )
