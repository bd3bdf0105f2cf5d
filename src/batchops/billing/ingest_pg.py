"""Usage ingestion's two writes on PostgreSQL, sent straight through asyncpg.

Ingestion on PostgreSQL must hold 10,000 reports/s (``python -m bench billing --db
postgresql`` checks it). Through SQLAlchemy a 100-report batch processes every value of a
multi-row INSERT in Python, then runs one server-side statement per entry and per account,
which leaves no margin over that floor. Here each write is ONE statement whose parameters
are one array per column (asyncpg encodes them in C), and the statement text is the same
for any batch size, so asyncpg prepares it once per connection.

The same interface as the portable path (:class:`batchops.billing.service.SqlUsageWrites`):
the service picks this one on PostgreSQL. Only asyncpg's public API is used, on the
driver connection SQLAlchemy hands out (``get_raw_connection().driver_connection``),
inside the session's transaction: the caller has run a statement through the session
first (``Book.load_known``), which began it, and :func:`_driver` refuses to write
otherwise, since a raw statement outside it would commit on its own.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import Book

USAGE_COLUMNS = (
    ("allocation_id", "varchar"),
    ("user_id", "varchar"),
    ("device_id", "varchar"),
    ("tenant_id", "varchar"),
    ("duration_seconds", "integer"),
    ("cpu_cores", "integer"),
    ("memory_mb", "integer"),
    ("storage_mb", "integer"),
    ("allocated_at", "timestamptz"),
    ("released_at", "timestamptz"),
    ("cost", "bigint"),
    ("currency", "varchar"),
    ("created_at", "timestamptz"),
)
INSERT_USAGE = (
    f"INSERT INTO billing_usage ({', '.join(name for name, _ in USAGE_COLUMNS)})"
    f" SELECT * FROM unnest({', '.join(f'${i}::{kind}[]' for i, (_, kind) in enumerate(USAGE_COLUMNS, 1))})"
    " ON CONFLICT (allocation_id) DO NOTHING RETURNING allocation_id"
)

# The book's writes of an ingestion (entries, captured holds, account deltas) in one
# statement. Its parts see the same snapshot and do not read each other's rows. The
# accounts are locked in id order first (``l``), as core.transactions orders them; they
# are already locked by ``Book.load_known`` on this path, so this costs no wait.
FLUSH = (
    "WITH e AS (INSERT INTO billing_entries (account_id, kind, amount, reference, memo, created_at)"
    " SELECT * FROM unnest($1::bigint[], $2::varchar[], $3::bigint[], $4::varchar[], $5::jsonb[], $6::timestamptz[])),"
    " h AS (UPDATE billing_holds t SET amount = d.amount, status = d.status, captured = d.captured,"
    " closed_at = d.closed_at"
    " FROM unnest($7::varchar[], $8::bigint[], $9::varchar[], $10::bigint[], $11::timestamptz[])"
    " AS d(reference, amount, status, captured, closed_at) WHERE t.reference = d.reference),"
    " l AS (SELECT id FROM billing_accounts WHERE id = ANY($12::bigint[]) ORDER BY id FOR NO KEY UPDATE)"
    " UPDATE billing_accounts a SET balance = a.balance + d.balance, held = a.held + d.held, updated_at = $15"
    " FROM unnest($12::bigint[], $13::bigint[], $14::bigint[]) AS d(id, balance, held)"
    " WHERE a.id = d.id AND a.id IN (SELECT id FROM l)"
)


class PgUsageWrites:
    """Usage rows and the book's changes, one asyncpg statement each."""

    async def insert_usage(self, session: AsyncSession, rows: list[dict[str, Any]]) -> set[str]:
        """Insert the usage rows whose ``allocation_id`` is new; those allocation ids."""
        if not rows:
            return set()
        driver = await _driver(session)
        arrays = [[r[name] for r in rows] for name, _ in USAGE_COLUMNS]
        return {r[0] for r in await driver.fetch(INSERT_USAGE, *arrays)}

    async def flush(self, book: Book) -> None:
        """``book.flush()`` for what ingestion stages (entries, captures, account deltas);
        a book that opened holds as well takes the portable path."""
        if book.new_holds:
            await book.flush()
            return
        changes = book.take_changes()
        entries, holds, deltas = changes.entries, changes.changed_holds, changes.deltas
        if not (entries or holds or deltas):
            return
        driver = await _driver(book.session)
        await driver.execute(
            FLUSH,
            [e["account_id"] for e in entries],
            [e["kind"] for e in entries],
            [e["amount"] for e in entries],
            [e["reference"] for e in entries],
            [None if e["memo"] is None else to_json(e["memo"]).decode() for e in entries],
            [e["created_at"] for e in entries],
            [h["reference"] for h in holds],
            [h["amount"] for h in holds],
            [h["status"] for h in holds],
            [h["captured"] for h in holds],
            [h["closed_at"] for h in holds],
            [d["id"] for d in deltas],
            [d["balance"] for d in deltas],
            [d["held"] for d in deltas],
            book.clock(),
        )


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under ``session``, which must be inside its transaction."""
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None or not driver.is_in_transaction():
        raise RuntimeError("raw ingestion writes need the session's transaction to have begun")
    return driver
