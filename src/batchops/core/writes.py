"""Independent writes of one transaction, sent together.

A batch ends with several writes that do not read each other's results: claim the
devices, insert the allocations, the ledger's changes, the outbox events, the
notifications. On PostgreSQL a ``WriteSet`` sends them as one statement of
data-modifying CTEs, each bound as one array per column, so the statement text is the
same whatever the batch size (one round trip instead of five: on a 10 ms budget each
round trip through the driver costs about half a millisecond). On SQLite, where a
"round trip" is a function call into the same process, each write runs as its own
executemany, in the order they were added.

The parts of one PostgreSQL statement all see the snapshot taken before it and run in
the order PostgreSQL chooses; only write things together that do not depend on one
another (constraints are checked at the end of the statement, so a row may reference
one inserted beside it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy import update as sa_update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.core.db import PgColumns, pg_columns, pg_connection, python_defaults, sqlite_insert_rows


class PgStatement:
    """One PostgreSQL statement being built: its CTEs and their positional arguments."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.ctes: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def columns(
        self, table: Table, names: tuple[str, ...], rows: list[dict[str, Any]], constants: dict[str, Any] | None = None
    ) -> PgColumns:
        """``names`` of ``table`` as array parameters holding ``rows``' values."""
        cols = pg_columns(table, names, self.dialect, len(self.args) + 1)
        self.args.extend(cols.arrays(rows, constants))
        return cols

    def cte(self, sql: str) -> str:
        """Add a CTE; its name, for a later CTE (or the counts) to read."""
        name = f"w{len(self.ctes)}"
        self.ctes.append(f"{name} AS ({sql})")
        return name


# A write's PostgreSQL form adds its CTE(s) and names the one whose rows it affected
# (a ``RETURNING`` CTE), or None; its SQLite form runs it and returns the row count.
PgPart = Callable[[PgStatement], str | None]
SqlitePart = Callable[[AsyncSession], Awaitable[int]]


@dataclass(frozen=True)
class _Write:
    pg: PgPart
    sqlite: SqlitePart


class WriteSet:
    """Writes collected by several domains, executed together by ``execute``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._writes: list[_Write] = []
        self._checks: dict[int, tuple[int, Exception]] = {}  # write index: rows it must affect, else this

    def add(self, pg: PgPart, sqlite: SqlitePart) -> int:
        """Add a write in its two forms; its index in ``execute``'s row counts."""
        self._writes.append(_Write(pg, sqlite))
        return len(self._writes) - 1

    def insert(self, table: Table, rows: list[dict[str, Any]]) -> int:
        """Insert ``rows`` (each with the same keys); columns left out get their
        Python-side defaults, as SQLAlchemy's own insert would give them."""
        if not rows:
            return self.add(lambda _: None, _no_rows)
        given = tuple(rows[0])
        defaults = python_defaults(table, given)

        def pg(stmt: PgStatement) -> str:
            cols = stmt.columns(table, given + tuple(defaults), rows, defaults)
            names = ", ".join(cols.names)
            return stmt.cte(f"INSERT INTO {table.name} ({names}) SELECT * FROM {cols.unnest} RETURNING 1")

        async def sqlite(session: AsyncSession) -> int:
            await sqlite_insert_rows(session, table, rows)
            return len(rows)

        return self.add(pg, sqlite)

    def update(
        self,
        table: Table,
        rows: list[dict[str, Any]],
        *,
        key: str = "id",
        values: dict[str, Any] | None = None,
        where: dict[str, Any] | None = None,
        unless_all: Exception | None = None,
    ) -> int:
        """Update the rows named by each ``rows[i][key]`` with that row's other values, and
        ``values`` (the same for every row), where the columns of ``where`` equal its values.
        ``unless_all``: raised by ``execute`` if not every row was updated (a claim lost)."""
        if unless_all is not None:
            self._checks[len(self._writes)] = (len(rows), unless_all)
        if not rows:
            return self.add(lambda _: None, _no_rows)
        names = (key, *(n for n in rows[0] if n != key))
        values, where = values or {}, where or {}

        def pg(stmt: PgStatement) -> str:
            cols = stmt.columns(table, names, rows)
            sets = [f"{n} = d.{n}" for n in names[1:]] + [f"{n} = {stmt.param(v)}" for n, v in values.items()]
            conditions = [f"t.{key} = d.{key}"] + [f"t.{n} = {stmt.param(v)}" for n, v in where.items()]
            return stmt.cte(
                f"UPDATE {table.name} AS t SET {', '.join(sets)} FROM {cols.unnest} AS d({', '.join(names)})"
                f" WHERE {' AND '.join(conditions)} RETURNING 1"
            )

        async def sqlite(session: AsyncSession) -> int:
            stmt = (
                sa_update(table)
                .where(table.c[key] == bindparam("b_" + key), *(table.c[n] == v for n, v in where.items()))
                .values({**{n: bindparam("b_" + n) for n in names[1:]}, **values})
            )
            result = await session.execute(stmt, [{"b_" + n: r[n] for n in names} for r in rows])
            return int(result.rowcount)  # type: ignore[attr-defined]

        return self.add(pg, sqlite)

    def __bool__(self) -> bool:
        return bool(self._writes)

    async def execute(self) -> list[int]:
        """Run every write; the rows each affected (0 for a PostgreSQL part that
        names no CTE). The set is empty afterwards."""
        writes, checks, self._writes, self._checks = self._writes, self._checks, [], {}
        if not writes:
            return []
        if self.session.new or self.session.dirty or self.session.deleted:
            await self.session.flush()  # ORM changes first: a row written here may reference one
        pg = await pg_connection(self.session)
        counts: list[int] = []
        if pg is None:
            for w in writes:  # checked one by one: a lost claim stops the writes that follow
                counts.append(await w.sqlite(self.session))
                _check(checks, len(counts) - 1, counts[-1])
            return counts
        stmt = PgStatement(self.session.get_bind().dialect)
        counted = [w.pg(stmt) for w in writes]
        if stmt.ctes:
            selected = ", ".join(f"(SELECT count(*) FROM {name})" if name else "0" for name in counted)
            counts = [int(n) for n in await pg.fetchrow(f"WITH {', '.join(stmt.ctes)} SELECT {selected}", *stmt.args)]
        else:
            counts = [0] * len(writes)
        for index, count in enumerate(counts):
            _check(checks, index, count)
        return counts


def _check(checks: dict[int, tuple[int, Exception]], index: int, count: int) -> None:
    if index in checks and checks[index][0] != count:
        raise checks[index][1]


async def _no_rows(_: AsyncSession) -> int:
    return 0


@asynccontextmanager
async def joining(session: AsyncSession, writes: WriteSet | None) -> AsyncIterator[WriteSet]:
    """The caller's ``writes`` to add to, or (None) a set of one's own, executed on exit:
    for a write that may go alone or with others."""
    if writes is not None:
        yield writes
        return
    own = WriteSet(session)
    yield own
    await own.execute()


async def insert_rows(session: AsyncSession, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (dicts with the same keys) now: one statement, the fast form of each engine."""
    async with joining(session, None) as w:
        w.insert(table, rows)
