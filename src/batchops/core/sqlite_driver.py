"""SQLAlchemy's aiosqlite adapter, with SQLite run on the event loop unless it must wait.

aiosqlite runs every sqlite3 call in its connection's thread; each call is a queue
put, a thread wake-up and a future resolved back on the event loop: 0.2-0.4 ms on
this 2-core machine, where the statement itself takes 10-100 µs. SQLAlchemy's adapter
makes four of them per SELECT (cursor, execute, fetchall, close) and three per write.

A statement only needs that thread when it may wait for a lock, and in WAL mode only
one thing waits: taking the write lock, with ``BEGIN IMMEDIATE`` (every transaction
of ``core.db`` starts so) or with a write outside a transaction. So this adapter:

* tries ``BEGIN IMMEDIATE`` on the loop without waiting (``busy_timeout`` 0); once it
  holds the write lock, every statement of the transaction and its COMMIT run on the
  loop, since none of them can wait;
* runs a single statement outside a transaction on the loop without waiting too (a
  read never waits in WAL mode); one that found the database busy had no effect;
* sends whatever found the database busy, and any several-statement write outside a
  transaction, to aiosqlite's thread, which waits with the connection's busy timeout.

It also runs a statement as one call (cursor, execute, fetch, close), carries the
``BEGIN IMMEDIATE`` of a transaction into its first statement (a transaction with no
statement takes no lock), and skips COMMIT / ROLLBACK when sqlite3 says no
transaction is open. What runs, and in which order, is unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# How long a statement waits for another connection's write lock (in aiosqlite's thread).
BUSY_TIMEOUT_MS = 30_000

# (result or the error it raised, whether a transaction is open after it: a failed
# statement may leave either)
_Outcome = tuple[Any, bool]


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """The whole statement: (description, rows, rowcount, lastrowid), or its error."""
    try:
        cursor = conn.cursor()
        try:
            if many:
                cursor.executemany(operation, parameters)
            elif parameters is None:
                cursor.execute(operation)
            else:
                cursor.execute(operation, parameters)
            description = cursor.description
            rows = cursor.fetchall() if description else None
            return (description, rows, cursor.rowcount, cursor.lastrowid), conn.in_transaction
        finally:
            cursor.close()
    except Exception as error:
        return error, conn.in_transaction


# One write of a batch: SQL, its rows of parameters, and the rows it must affect (else stop).
Write = tuple[str, list[tuple[Any, ...]], int | None]


def _run_writes(conn: sqlite3.Connection, writes: list[Write]) -> _Outcome:
    """Each write's executemany in order, its row count kept; stop after a write that
    did not affect the rows it must (the caller raises), or at an error (returned with
    ``failed_write``, the index of the write that failed)."""
    counts: list[int] = []
    try:
        for sql, parameters, expected in writes:
            counts.append(conn.executemany(sql, parameters).rowcount)
            if expected is not None and counts[-1] != expected:
                break
    except Exception as error:
        error.failed_write = len(counts)  # type: ignore[attr-defined]
        return error, conn.in_transaction
    return counts, conn.in_transaction


def _fetch(conn: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]) -> _Outcome:
    """A read's rows (or its error)."""
    try:
        return conn.execute(sql, parameters).fetchall(), conn.in_transaction
    except Exception as error:
        return error, conn.in_transaction


def _end(conn: sqlite3.Connection, commit: bool) -> _Outcome:
    """COMMIT or ROLLBACK; sqlite3 keeps the transaction open when COMMIT fails (busy)."""
    try:
        conn.commit() if commit else conn.rollback()
    except Exception as error:
        return error, conn.in_transaction
    return None, conn.in_transaction


def _write_and_commit(conn: sqlite3.Connection, writes: list[Write]) -> _Outcome:
    """The writes kept for the COMMIT, then the COMMIT; a failed write rolls the whole
    transaction back (as a failed statement before it would have) and is returned."""
    outcome, _ = _run_writes(conn, writes)
    if isinstance(outcome, Exception):
        with contextlib.suppress(Exception):
            conn.rollback()
        return outcome, conn.in_transaction
    return _end(conn, True)


def _after_begin(conn: sqlite3.Connection, begin: str | None, call: Callable[..., _Outcome], *args: Any) -> _Outcome:
    """``begin`` (if any), then ``call``: one trip to aiosqlite's thread for both."""
    if begin is not None:
        try:
            conn.execute(begin)
        except Exception as error:
            return error, conn.in_transaction
    return call(conn, *args)


_NOT_TRIED = object()


def _is_busy(outcome: Any) -> bool:
    return isinstance(outcome, sqlite3.OperationalError) and outcome.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _without_waiting(conn: sqlite3.Connection, call: Callable[..., _Outcome], *args: Any) -> _Outcome:
    """``call`` with a busy timeout of 0: it finds the database busy rather than wait."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        return call(conn, *args)
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _begin_without_waiting(conn: sqlite3.Connection, begin: str) -> bool:
    """Whether ``begin`` took the write lock at once (a busy or failed BEGIN changes
    nothing: the thread tries again, and reports any other error)."""

    def begin_now(conn: sqlite3.Connection) -> _Outcome:
        conn.execute(begin)
        return None, conn.in_transaction

    try:
        _, began = _without_waiting(conn, begin_now)
    except sqlite3.Error:
        return False
    return began


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor: results are fetched with the statement, so there is no
    aiosqlite cursor to open or close."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        return None

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._run(operation, parameters, False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._run(operation, seq_of_parameters, True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        adapt: OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        async with adapt._execute_mutex:
            outcome = await adapt.call(_run, operation, parameters, many, retry_if_busy=not many)
        if isinstance(outcome, Exception):
            raise outcome
        self._description, rows, self._rowcount, self._lastrowid = outcome
        if rows is not None:
            self._rows = collections.deque(rows)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("at_commit", "holds_write_lock", "in_transaction", "pending_begin")

    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.pending_begin: str | None = None
        self.in_transaction = False
        self.holds_write_lock = False  # our BEGIN IMMEDIATE took it, and the transaction is open
        self.at_commit: list[Write] = []  # written in the COMMIT's hop (see write_at_commit)

    async def call(self, call: Callable[..., _Outcome], *args: Any, retry_if_busy: bool) -> Any:
        """``call(conn, *args)``'s outcome (its result, or the error it returned), on the
        event loop when it cannot wait for a lock, else in aiosqlite's thread (see the
        module's docstring). ``retry_if_busy``: ``call`` is one statement, which has no
        effect when it finds the database busy, so it may be tried on the loop first."""
        begin, self.pending_begin = self.pending_begin, None
        conn = self._connection._conn
        outcome: Any = _NOT_TRIED
        if begin is not None and _begin_without_waiting(conn, begin):
            begin, self.holds_write_lock = None, True
        if self.holds_write_lock:  # nothing in the transaction can wait
            outcome, self.in_transaction = call(conn, *args)
        else:
            if begin is None and retry_if_busy:
                outcome, self.in_transaction = _without_waiting(conn, call, *args)
            if outcome is _NOT_TRIED or _is_busy(outcome):
                try:
                    outcome, self.in_transaction = await self._connection._execute(
                        _after_begin, conn, begin, call, *args
                    )
                except BaseException:  # cancelled or the thread is gone: the state is unknown, so
                    self.in_transaction = True  # the next COMMIT/ROLLBACK goes to sqlite3 for real
                    raise
                self.holds_write_lock = begin is not None
        self.holds_write_lock = self.holds_write_lock and self.in_transaction
        return outcome

    async def run_writes(self, writes: list[Write]) -> list[int]:
        """Several executemany writes in one call (a batch's writes, which SQLAlchemy
        would send one by one at ~0.4 ms of Python each): their row counts, stopping after
        a write that missed its expected count. A failed write raises its sqlite3 error
        with ``failed_write``, its index. The transaction is the connection's own, begun
        as any statement's (``BEGIN IMMEDIATE`` carried in)."""
        async with self._execute_mutex:
            outcome = await self.call(_run_writes, writes, retry_if_busy=False)
        if isinstance(outcome, Exception):
            raise outcome
        counts: list[int] = outcome
        return counts

    async def fetch(self, sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A read's rows in one call, as sqlite3 gives them (no cursor kept, no result
        object): in the connection's transaction if one is open or pending, else alone."""
        async with self._execute_mutex:
            outcome = await self.call(_fetch, sql, parameters, retry_if_busy=True)
        if isinstance(outcome, Exception):
            raise outcome
        rows: list[tuple[Any, ...]] = outcome
        return rows

    def write_at_commit(self, writes: list[Write]) -> None:
        """Keep ``writes`` (whose row counts nobody reads) for the COMMIT: they run in its
        call, after every other statement, so a transaction's last insert (its audit row)
        costs no call of its own. A ROLLBACK drops them; a failed one fails the COMMIT."""
        self.at_commit.extend(writes)

    def begin_with_next_statement(self, sql: str) -> None:
        """Run ``sql`` (``BEGIN IMMEDIATE``) just before the next statement, in the same call.
        A transaction with no statement then takes no lock and costs nothing."""
        self.pending_begin = sql
        self.at_commit = []  # a new transaction: nothing of one that never ended is written

    def _end(self, commit: bool) -> None:
        writes, self.at_commit = self.at_commit, []
        if commit and writes:
            self._finish(_write_and_commit, writes)
            return
        self.pending_begin = None  # a transaction that ran no statement: nothing began
        if self.in_transaction:  # else autocommit (isolation_level None): nothing to end
            self._finish(_end, commit)

    def _finish(self, end: Callable[..., _Outcome], *args: Any) -> None:
        try:
            error = await_(self.call(end, *args, retry_if_busy=False))
            if error is not None:
                raise error
        except Exception as error:
            self._handle_exception(error)

    def commit(self) -> None:
        if self._connection._connection:
            self._end(True)

    def rollback(self) -> None:
        if self._connection._connection:
            self._end(False)


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def one_hop_dbapi() -> OneHopDBAPI:
    """The ``module=`` of ``create_async_engine`` for ``sqlite+aiosqlite`` URLs."""
    import aiosqlite

    return OneHopDBAPI(aiosqlite, sqlite3)
