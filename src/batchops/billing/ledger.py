"""The ledger: balances, holds and charges in exact minor units.

Two ways in:

* :class:`Book` for batch work: ``load`` the accounts (and holds) of every user a
  batch touches in a constant number of queries, with their rows locked; decide
  each item in memory (``hold`` raises :class:`InsufficientBalance` before
  anything is staged, so a failed item leaves no trace); ``flush`` writes
  everything in bulk. This is what the scheduler's batch allocate uses, and why
  many allocations at once can never overspend: the account rows stay locked
  until the transaction commits.
* :class:`Ledger` for one-off operations (a top-up, a balance read).

Every entry carries a unique reference (``topup:…``, ``hold:…``, ``capture:…``),
so a replayed operation finds its entry and does nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.models import CAPTURED, OPEN, RELEASED, Account, Hold, LedgerEntry
from batchops.core.db import SqliteWrite, insert_new, pg_connection, sqlite_statement, table_of, utcnow
from batchops.core.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from batchops.core.schemas import cents_to_decimal
from batchops.core.writes import PgPart, PgStatement, SqlitePart, WriteSet, joining
from batchops.identity.models import User

CNY, CREDITS = "CNY", "CREDITS"
CURRENCIES = (CNY, CREDITS)


class InsufficientBalance(ForbiddenError):
    """403 ``ForbiddenException`` with the reason DESIGN.md fixes, ``Insufficient
    balance``; the amounts (needed, available, shortfall) are in ``details``, as JSON
    money (CNY with two decimals, whole credits)."""

    def __init__(self, currency: str, needed: int, available: int) -> None:
        self.needed, self.available, self.shortfall = needed, available, needed - available
        amounts = {"needed": needed, "available": available, "shortfall": needed - available}
        super().__init__(
            INSUFFICIENT_BALANCE,
            details=[{**{k: json_amount(v, currency) for k, v in amounts.items()}, "currency": currency}],
        )


INSUFFICIENT_BALANCE = "Insufficient balance"


def json_amount(minor: int, currency: str) -> int | float:
    """Minor units as a JSON number: whole credits, or money with two decimals."""
    return minor if currency == CREDITS else float(cents_to_decimal(minor))


def format_amount(minor: int, currency: str) -> str:
    """Minor units as the JSON contract shows them: two decimals for money, whole credits."""
    if currency == CREDITS:
        return str(minor)
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


@dataclass(frozen=True)
class Balance:
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass
class _Account:
    id: int
    user_id: str
    balance: int
    held: int
    # what this book changed: written as relative updates (balance = balance + delta)
    balance_delta: int = 0
    held_delta: int = 0

    def change(self, *, balance: int = 0, held: int = 0) -> None:
        self.balance += balance
        self.held += held
        self.balance_delta += balance
        self.held_delta += held


@dataclass(slots=True)
class _Hold:
    """A ``billing_holds`` row as the book sees it: a plain object, not an ORM ``Hold``,
    whose instrumented construction cost ~80 µs per allocation of a batch."""

    reference: str
    account_id: int
    amount: int
    status: str
    captured: int
    created_at: datetime
    closed_at: datetime | None


@dataclass
class Book:
    """Accounts of a set of users in one currency, (locked,) changed in memory, written once."""

    session: AsyncSession
    currency: str
    accounts: dict[str, _Account] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    new_holds: list[dict[str, Any]] = field(default_factory=list)
    changed_holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    known_references: set[str] = field(default_factory=set)

    async def load(self, user_ids: Iterable[str], *, hold_references: Iterable[str] = (), lock: bool = True) -> Book:
        """Read the accounts (creating missing ones) and the named holds: 2–4 queries.

        ``lock``: keep the account rows locked until commit. Needed to *check* a
        balance (holds); not needed to capture or charge, which only subtract."""
        ids = sorted(set(user_ids) - set(self.accounts))
        if ids:
            missing = set(ids) - await self._read_accounts(ids, lock)
            if missing:
                now = utcnow()
                await insert_new(
                    self.session,
                    Account,
                    [
                        {"user_id": u, "currency": self.currency, "balance": 0, "held": 0, "updated_at": now}
                        for u in sorted(missing)
                    ],
                    conflict_on=["user_id", "currency"],
                )
                await self._read_accounts(sorted(missing), lock)
        refs = sorted(set(hold_references) - set(self.holds))
        if refs:
            # Plain objects, not attached to the session: ``flush`` writes their changes
            # once, instead of the ORM writing them a second time at commit.
            pg = await pg_connection(self.session)
            if pg is not None:
                rows: Any = await pg.fetch(PG_HOLDS, refs)
            else:
                rows = (await self.session.execute(HOLDS_BY_REFERENCE, {"refs": refs})).mappings()
            self.holds.update({r["reference"]: _Hold(**dict(r)) for r in rows})
        return self

    async def load_known(self, user_ids: Iterable[str], *, hold_references: Iterable[str] = ()) -> set[str]:
        """Those of ``user_ids`` that are users, with their accounts (locked; missing ones
        created) and the named holds (locked after them): one query on PostgreSQL when the
        accounts exist. For callers that must tell unknown users apart anyway (usage
        ingestion), instead of a users, an accounts and a holds query."""
        ids, refs = sorted(set(user_ids)), sorted(set(hold_references) - set(self.holds))
        pg = await pg_connection(self.session)
        if pg is not None:
            rows: Any = await pg.fetch(PG_USERS_ACCOUNTS_HOLDS, ids, self.currency, refs)
        else:
            rows = await self.session.execute(USERS_ACCOUNTS, {"ids": ids, "currency": self.currency}) if ids else []
        known = set()
        for user_id, account_id, balance, held, *hold in rows:
            if hold and hold[0] is not None:
                self.holds[hold[0]["reference"]] = _Hold(**dict(hold[0]))
                continue
            known.add(user_id)
            if account_id is not None and user_id not in self.accounts:
                self.accounts[user_id] = _Account(account_id, user_id, balance, held)
        # missing accounts are created (no query if none); on SQLite, the holds read here
        await self.load(known, hold_references=() if pg is not None else refs, lock=False)
        return known

    async def _read_accounts(self, ids: list[str], lock: bool) -> set[str]:
        pg = await pg_connection(self.session)
        if pg is not None:
            rows: Any = await pg.fetch(PG_ACCOUNTS_LOCKED if lock else PG_ACCOUNTS, ids, self.currency)
        else:
            stmt = ACCOUNTS_BY_USER.with_for_update() if lock else ACCOUNTS_BY_USER
            rows = await self.session.execute(stmt, {"ids": ids, "currency": self.currency})
        for account_id, user_id, balance, held in rows:
            self.accounts[user_id] = _Account(account_id, user_id, balance, held)
        return {u for u in ids if u in self.accounts}

    async def load_references(self, references: Iterable[str]) -> None:
        """Remember which entry references exist already (replays become no-ops)."""
        refs = sorted(set(references))
        if refs:
            found = await self.session.scalars(select(LedgerEntry.reference).where(LedgerEntry.reference.in_(refs)))
            self.known_references.update(found)

    # --- decisions in memory -------------------------------------------------------------
    def balance(self, user_id: str) -> Balance:
        a = self.accounts.get(user_id)
        return Balance(a.balance, a.held) if a else Balance(0, 0)

    def _account(self, user_id: str) -> _Account:
        account = self.accounts.get(user_id)
        if account is None:
            raise NotFoundError(f"No {self.currency} account loaded for user {user_id}")
        return account

    def hold(self, user_id: str, amount: int, reference: str, memo: dict[str, Any] | None = None) -> None:
        if amount < 0:
            raise BadRequestError("A hold cannot be negative")
        if reference in self.holds:
            return  # replayed
        account = self._account(user_id)
        if account.balance - account.held < amount:
            raise InsufficientBalance(self.currency, amount, account.balance - account.held)
        account.change(held=amount)
        now = utcnow()
        self.holds[reference] = _Hold(reference, account.id, amount, OPEN, 0, now, None)
        self.new_holds.append(
            {
                "reference": reference,
                "account_id": account.id,
                "amount": amount,
                "status": OPEN,
                "captured": 0,
                "created_at": now,
                "closed_at": None,
            }
        )
        self._entry(account, "hold", amount, f"hold:{reference}", memo)

    def add_to_hold(self, reference: str, amount: int, memo: dict[str, Any] | None = None) -> None:
        """Raise an open hold (an extension). A missing or closed hold is left alone."""
        hold = self.holds.get(reference)
        if hold is None or hold.status != OPEN or amount <= 0:
            return
        account = self._account_by_id(hold.account_id)
        if account.balance - account.held < amount:
            raise InsufficientBalance(self.currency, amount, account.balance - account.held)
        account.change(held=amount)
        hold.amount += amount
        self._changed(hold)
        # the hold only grows, so its new total makes the entry's reference unique
        self._entry(account, "hold", amount, f"hold:{reference}:{hold.amount}", memo)

    def capture(self, reference: str, amount: int, memo: dict[str, Any] | None = None) -> int | None:
        """Charge up to ``amount`` from an open hold and free the rest. Returns what was
        charged (0 for a use that cost nothing), or None if there was no open hold."""
        hold = self.holds.get(reference)
        if hold is None or hold.status != OPEN:
            return None
        account = self._account_by_id(hold.account_id)
        charged = max(0, amount)
        account.change(balance=-charged, held=-hold.amount)
        hold.status, hold.captured, hold.closed_at = CAPTURED, charged, utcnow()
        self._changed(hold)
        self._entry(account, "capture", -charged, f"capture:{reference}", memo)
        return charged

    def release(self, reference: str, memo: dict[str, Any] | None = None) -> None:
        hold = self.holds.get(reference)
        if hold is None or hold.status != OPEN:
            return
        account = self._account_by_id(hold.account_id)
        account.change(held=-hold.amount)
        hold.status, hold.closed_at = RELEASED, utcnow()
        self._changed(hold)
        self._entry(account, "release", 0, f"release:{reference}", memo)

    def charge(self, user_id: str, amount: int, reference: str, memo: dict[str, Any] | None = None) -> None:
        """A debit without a hold (usage that was never pre-authorised). May go below zero: usage happened."""
        if reference in self.known_references:
            return
        account = self._account(user_id)
        account.change(balance=-amount)
        self._entry(account, "charge", -amount, reference, memo)

    def topup(self, user_id: str, amount: int, reference: str, memo: dict[str, Any] | None = None) -> bool:
        if amount <= 0:
            raise BadRequestError("amount must be greater than 0")
        if reference in self.known_references:
            return False
        account = self._account(user_id)
        account.change(balance=amount)
        self._entry(account, "topup", amount, reference, memo)
        return True

    def held_for_another(self, reference: str, user_id: str) -> bool:
        """Whether the open hold ``reference`` was taken on another user's account (a usage
        report naming the wrong user must not capture it)."""
        hold, account = self.holds.get(reference), self.accounts.get(user_id)
        return hold is not None and hold.status == OPEN and (account is None or hold.account_id != account.id)

    def _account_by_id(self, account_id: int) -> _Account:
        return next(a for a in self.accounts.values() if a.id == account_id)

    def _changed(self, hold: _Hold) -> None:
        values = {"amount": hold.amount, "status": hold.status, "captured": hold.captured, "closed_at": hold.closed_at}
        staged = next((h for h in self.new_holds if h["reference"] == hold.reference), None)
        if staged is not None:  # not written yet: change the row to insert
            staged.update(values)
        else:
            self.changed_holds[hold.reference] = {"reference": hold.reference, **values}

    def _entry(self, account: _Account, kind: str, amount: int, reference: str, memo: dict[str, Any] | None) -> None:
        self.known_references.add(reference)
        self.entries.append(
            {
                "account_id": account.id,
                "kind": kind,
                "amount": amount,
                "reference": reference,
                "memo": memo,
                "created_at": utcnow(),
            }
        )

    # --- one write ----------------------------------------------------------------------
    async def flush(self, writes: WriteSet | None = None) -> None:
        """Write every staged change: one statement on PostgreSQL, at most four on SQLite,
        whatever the batch size (with ``writes``: added to the caller's, sent with them).

        Accounts get relative updates in id order (no lost update without a lock, no
        deadlock between two books), last: their row locks are then held only until the
        commit that follows. Rows are Core executemany (no ORM bookkeeping)."""
        now = utcnow()
        changed = sorted((a for a in self.accounts.values() if a.balance_delta or a.held_delta), key=lambda a: a.id)
        deltas = [{"id": a.id, "balance": a.balance_delta, "held": a.held_delta} for a in changed]
        async with joining(self.session, writes) as w:
            if self.new_holds:
                w.insert(HOLDS, self.new_holds)
            if self.changed_holds:
                w.update(HOLDS, list(self.changed_holds.values()), key="reference")
            if self.entries:
                w.insert(ENTRIES, self.entries)
            if deltas:
                w.add(*_account_deltas(deltas, now))
        self.new_holds, self.changed_holds, self.entries = [], {}, []
        for a in changed:
            a.balance_delta = a.held_delta = 0


def _account_deltas(deltas: list[dict[str, Any]], now: datetime) -> tuple[PgPart, SqlitePart]:
    """Relative updates of accounts. On PostgreSQL the accounts are locked first, in id
    order (the ``SELECT … ORDER BY id FOR NO KEY UPDATE`` the update joins), as separate
    updates in id order would be: two books touching the same accounts never deadlock."""

    def pg(stmt: PgStatement) -> str:
        c = stmt.columns(ACCOUNTS, ("id", "balance", "held"), deltas)
        locked = stmt.cte(f"SELECT id FROM {ACCOUNTS.name} WHERE id = ANY({c.params[0]}) ORDER BY id FOR NO KEY UPDATE")
        return stmt.cte(
            f"UPDATE {ACCOUNTS.name} a SET balance = a.balance + d.balance, held = a.held + d.held,"
            f" updated_at = {stmt.param(now)} FROM {c.unnest} AS d(id, balance, held)"
            f" WHERE a.id = d.id AND a.id IN (SELECT id FROM {locked}) RETURNING 1"
        )

    def sqlite(dialect: Dialect) -> SqliteWrite:
        rows = [{"b_id": d["id"], "b_balance": d["balance"], "b_held": d["held"], "b_now": now} for d in deltas]
        return sqlite_statement(ACCOUNT_DELTA, rows, dialect)

    return pg, sqlite


ACCOUNTS, HOLDS, ENTRIES = table_of(Account), table_of(Hold), table_of(LedgerEntry)
USERS = table_of(User)
ACCOUNT_DELTA = (
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == bindparam("b_id"))
    .values(
        balance=ACCOUNTS.c.balance + bindparam("b_balance"),
        held=ACCOUNTS.c.held + bindparam("b_held"),
        updated_at=bindparam("b_now"),
    )
)
ACCOUNTS_BY_USER = (
    select(ACCOUNTS.c.id, ACCOUNTS.c.user_id, ACCOUNTS.c.balance, ACCOUNTS.c.held)
    .where(ACCOUNTS.c.user_id.in_(bindparam("ids", expanding=True)), ACCOUNTS.c.currency == bindparam("currency"))
    .order_by(ACCOUNTS.c.id)
)
USERS_ACCOUNTS = (
    select(USERS.c.id, ACCOUNTS.c.id, ACCOUNTS.c.balance, ACCOUNTS.c.held)
    .select_from(
        USERS.outerjoin(ACCOUNTS, and_(ACCOUNTS.c.user_id == USERS.c.id, ACCOUNTS.c.currency == bindparam("currency")))
    )
    .where(USERS.c.id.in_(bindparam("ids", expanding=True)))
)
HOLDS_BY_REFERENCE = (
    select(HOLDS)
    .where(HOLDS.c.reference.in_(bindparam("refs", expanding=True)))
    .order_by(HOLDS.c.reference)
    .with_for_update()
)
# The same reads for PostgreSQL's driver: an array parameter instead of an expanded IN list.
# Locks follow core.transactions' order: accounts in id order (NO KEY UPDATE: the foreign-key
# checks of new holds and entries do not wait for it), then holds in reference order.
PG_ACCOUNTS = (
    "SELECT id, user_id, balance, held FROM billing_accounts"
    " WHERE user_id = ANY($1::varchar[]) AND currency = $2 ORDER BY id"
)
PG_ACCOUNTS_LOCKED = PG_ACCOUNTS + " FOR NO KEY UPDATE"
# Users, their accounts and the named holds in one round trip, the accounts locked before
# the holds (the holds' one-time filter counts every locked account first); the holds
# ride along as whole rows of their table's composite type.
PG_USERS_ACCOUNTS_HOLDS = (
    f"WITH a AS ({PG_ACCOUNTS_LOCKED}),"
    " h AS (SELECT * FROM billing_holds WHERE reference = ANY($3::varchar[]) AND (SELECT count(*) FROM a) >= 0"
    " ORDER BY reference FOR UPDATE)"
    " SELECT u.id, a.id, a.balance, a.held, NULL::billing_holds FROM users u"
    " LEFT JOIN a ON a.user_id = u.id WHERE u.id = ANY($1::varchar[])"
    " UNION ALL SELECT NULL, NULL, NULL, NULL, ROW(h.*)::billing_holds FROM h"
)
PG_HOLDS = "SELECT * FROM billing_holds WHERE reference = ANY($1::varchar[]) ORDER BY reference FOR UPDATE"


def available_balance(user_id: ColumnElement[str], currency: str) -> ColumnElement[int]:
    """SQL: a user's available balance (balance - held, minor units; 0 without an account),
    for filters that must not read every account into Python (the wait queue's)."""
    available = select(ACCOUNTS.c.balance - ACCOUNTS.c.held).where(
        ACCOUNTS.c.user_id == user_id, ACCOUNTS.c.currency == currency
    )
    return func.coalesce(available.scalar_subquery(), 0)


class Ledger:
    """One-off operations in the caller's session (which the caller commits). Batch work
    (allocations, usage, studio tasks) uses a :class:`Book` directly."""

    async def topup(
        self, session: AsyncSession, user_id: str, currency: str, amount: int, reference: str, memo: Any = None
    ) -> bool:
        book = await Book(session, currency).load([user_id])
        await book.load_references([reference])
        done = book.topup(user_id, amount, reference, memo)
        await book.flush()
        if not done:  # a replay: only of the same top-up, or the client reused its key by mistake
            first = (
                await session.execute(
                    select(Account.user_id, Account.currency, LedgerEntry.amount)
                    .join(Account, Account.id == LedgerEntry.account_id)
                    .where(LedgerEntry.reference == reference)
                )
            ).one()
            if tuple(first) != (user_id, currency, amount):
                raise ConflictError("This reference was used for another top-up")
        return done

    async def balances(self, session: AsyncSession, user_ids: Iterable[str], currency: str) -> dict[str, Balance]:
        ids = sorted(set(user_ids))
        rows = await session.execute(
            select(Account.user_id, Account.balance, Account.held).where(
                Account.user_id.in_(ids), Account.currency == currency
            )
        )
        found = {u: Balance(b, h) for u, b, h in rows}
        return {u: found.get(u, Balance(0, 0)) for u in ids}
