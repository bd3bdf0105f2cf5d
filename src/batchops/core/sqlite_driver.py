"""SQLAlchemy's aiosqlite adapter with one thread hop per statement.

aiosqlite runs every sqlite3 call in its connection's thread; each call is a queue
put, a thread wake-up and a future resolved back on the event loop (50-200 µs on a
busy machine). SQLAlchemy's adapter makes four of them per SELECT (cursor, execute,
fetchall, close) and three per write, plus one to ROLLBACK a read that never began a
transaction. A batch request made ~16-45 of them. This adapter runs a statement as one
function in that thread (cursor, execute, fetch, close), carries the ``BEGIN
IMMEDIATE`` of a transaction into its first statement, and skips COMMIT / ROLLBACK
when sqlite3 says no transaction is open. What runs, and in which order, is unchanged.
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

_Outcome = tuple[Any, list[Any] | None, int, int | None]


def _run(
    conn: sqlite3.Connection, begin: str | None, operation: str, parameters: Any, many: bool
) -> tuple[_Outcome | Exception, bool]:
    """In aiosqlite's thread: the whole statement (or its error), and whether a
    transaction is open after it, which a failed statement may leave either way."""
    try:
        if begin is not None:
            conn.execute(begin)
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


def _run_writes(
    conn: sqlite3.Connection, begin: str | None, writes: list[Write]
) -> tuple[list[int] | tuple[int, Exception], bool]:
    """In aiosqlite's thread: each write's executemany in order, its row count kept; stop
    after a write that did not affect the rows it must (the caller raises), or at an
    error (returned with the index of the write that failed)."""
    counts: list[int] = []
    try:
        if begin is not None:
            conn.execute(begin)
        for sql, parameters, expected in writes:
            counts.append(conn.executemany(sql, parameters).rowcount)
            if expected is not None and counts[-1] != expected:
                break
    except Exception as error:
        return (len(counts), error), conn.in_transaction
    return counts, conn.in_transaction


def _fetch(conn: sqlite3.Connection, begin: str | None, sql: str, parameters: tuple[Any, ...]) -> tuple[Any, bool]:
    """In aiosqlite's thread: a read's rows (or its error)."""
    try:
        if begin is not None:
            conn.execute(begin)
        return conn.execute(sql, parameters).fetchall(), conn.in_transaction
    except Exception as error:
        return error, conn.in_transaction


def _end(conn: sqlite3.Connection, commit: bool) -> tuple[Exception | None, bool]:
    """COMMIT or ROLLBACK; sqlite3 keeps the transaction open when COMMIT fails (busy)."""
    try:
        conn.commit() if commit else conn.rollback()
    except Exception as error:
        return error, conn.in_transaction
    return None, conn.in_transaction


def _write_and_commit(
    conn: sqlite3.Connection, begin: str | None, writes: list[Write]
) -> tuple[Exception | None, bool]:
    """The writes kept for the COMMIT, then the COMMIT; a failed write rolls the whole
    transaction back (as a failed statement before it would have) and is returned."""
    outcome, _ = _run_writes(conn, begin, writes)
    if isinstance(outcome, tuple):
        index, error = outcome
        error.failed_write = index  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            conn.rollback()
        return error, conn.in_transaction
    return _end(conn, True)


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
            begin, adapt.pending_begin = adapt.pending_begin, None
            driver = self._connection
            try:
                outcome, state = await driver._execute(_run, driver._conn, begin, operation, parameters, many)
            except BaseException:  # cancelled or the thread is gone: the state is unknown, so
                adapt.in_transaction = True  # the next COMMIT/ROLLBACK goes to sqlite3 for real
                raise
            adapt.in_transaction = state
            if isinstance(outcome, Exception):
                raise outcome
            self._description, rows, self._rowcount, self._lastrowid = outcome
            if rows is not None:
                self._rows = collections.deque(rows)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("at_commit", "in_transaction", "pending_begin")

    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.pending_begin: str | None = None
        self.in_transaction = False
        self.at_commit: list[Write] = []  # written in the COMMIT's hop (see write_at_commit)

    async def run_writes(self, writes: list[Write]) -> list[int]:
        """Several executemany writes in one thread hop (a batch's writes, which SQLAlchemy
        would send one by one at ~0.4 ms of Python each): their row counts, stopping after
        a write that missed its expected count. A failed write raises its sqlite3 error
        with ``failed_write``, its index. The transaction is the connection's own, begun
        as any statement's (``BEGIN IMMEDIATE`` carried in)."""
        async with self._execute_mutex:
            begin, self.pending_begin = self.pending_begin, None
            driver = self._connection
            try:
                outcome, self.in_transaction = await driver._execute(_run_writes, driver._conn, begin, writes)
            except BaseException:
                self.in_transaction = True  # unknown, as in OneHopCursor._run
                raise
        if isinstance(outcome, tuple):
            index, error = outcome
            error.failed_write = index
            raise error
        counts: list[int] = outcome
        return counts

    async def fetch(self, sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A read's rows in one hop, as sqlite3 gives them (no cursor kept, no result
        object): in the connection's transaction if one is open or pending, else alone."""
        async with self._execute_mutex:
            begin, self.pending_begin = self.pending_begin, None
            driver = self._connection
            try:
                outcome, self.in_transaction = await driver._execute(_fetch, driver._conn, begin, sql, parameters)
            except BaseException:
                self.in_transaction = True  # unknown, as in OneHopCursor._run
                raise
        if isinstance(outcome, Exception):
            raise outcome
        rows: list[tuple[Any, ...]] = outcome
        return rows

    def write_at_commit(self, writes: list[Write]) -> None:
        """Keep ``writes`` (whose row counts nobody reads) for the COMMIT: they run in its
        hop, after every other statement, so a transaction's last insert (its audit row)
        costs no hop of its own. A ROLLBACK drops them; a failed one fails the COMMIT."""
        self.at_commit.extend(writes)

    def begin_with_next_statement(self, sql: str) -> None:
        """Run ``sql`` (``BEGIN IMMEDIATE``) just before the next statement, in the same hop.
        A transaction with no statement then takes no lock and costs nothing."""
        self.pending_begin = sql
        self.at_commit = []  # a new transaction: nothing of one that never ended is written

    def _end(self, commit: bool) -> None:
        begin, self.pending_begin = self.pending_begin, None
        writes, self.at_commit = self.at_commit, []
        if commit and writes:
            self._finish(_write_and_commit, begin, writes)
        elif self.in_transaction:  # else autocommit (isolation_level None): nothing to end
            self._finish(_end, commit)

    def _finish(self, end: Callable[..., tuple[Exception | None, bool]], *args: Any) -> None:
        try:
            try:
                error, self.in_transaction = await_(self._connection._execute(end, self._connection._conn, *args))
            except BaseException:
                self.in_transaction = True  # unknown, as above
                raise
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
