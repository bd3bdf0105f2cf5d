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

from sqlalchemy import ColumnElement, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.models import CAPTURED, OPEN, RELEASED, Account, Hold, LedgerEntry
from batchops.core.clock import Clock, system_clock
from batchops.core.db import insert_ignore, table_of
from batchops.core.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from batchops.core.schemas import cents_to_decimal
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
    """A ``billing_holds`` row as the book sees it: a plain object, not attached to the
    session, so ``flush`` writes its changes once and the ORM never writes them again."""

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
    clock: Clock = system_clock  # stamps the rows it writes (holds opened and closed, entries)
    accounts: dict[str, _Account] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    new_holds: list[dict[str, Any]] = field(default_factory=list)
    changed_holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    known_references: set[str] = field(default_factory=set)

    async def load(self, user_ids: Iterable[str], *, hold_references: Iterable[str] = (), lock: bool = True) -> Book:
        """Read the accounts (creating missing ones), then the named holds (locked).

        ``lock``: keep the account rows locked until commit. Needed to *check* a
        balance (holds); not needed to capture or charge, which only subtract."""
        ids = sorted(set(user_ids) - set(self.accounts))
        if ids:
            missing = set(ids) - await self._read_accounts(ids, lock)
            if missing:
                now = self.clock()
                await insert_ignore(
                    self.session,
                    Account,
                    [
                        {"user_id": u, "currency": self.currency, "balance": 0, "held": 0, "updated_at": now}
                        for u in sorted(missing)
                    ],
                    key=["user_id", "currency"],
                )
                await self._read_accounts(sorted(missing), lock)
        refs = sorted(set(hold_references) - set(self.holds))
        if refs:
            rows = await self.session.execute(HOLDS_LOCKED, {"refs": refs})
            self.holds.update({r.reference: _Hold(*r) for r in rows})
        return self

    async def load_known(self, user_ids: Iterable[str], *, hold_references: Iterable[str] = ()) -> set[str]:
        """Those of ``user_ids`` that are users, with their accounts (locked; missing ones
        created) and the named holds (locked after them). For callers that must tell
        unknown users apart anyway (usage ingestion): one query finds the users and locks
        their accounts, instead of one for each."""
        ids = sorted(set(user_ids))
        known = set()
        if ids:
            for user_id, account_id, balance, held in await self.session.execute(
                USERS_ACCOUNTS, {"ids": ids, "currency": self.currency}
            ):
                known.add(user_id)
                if account_id is not None and user_id not in self.accounts:
                    self.accounts[user_id] = _Account(account_id, user_id, balance, held)
        await self.load(known, hold_references=hold_references, lock=False)  # only the missing accounts
        return known

    async def _read_accounts(self, ids: list[str], lock: bool) -> set[str]:
        for account_id, user_id, balance, held in await self.session.execute(
            ACCOUNTS_LOCKED if lock else ACCOUNTS_OF, {"ids": ids, "currency": self.currency}
        ):
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
        now = self.clock()
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
        hold.status, hold.captured, hold.closed_at = CAPTURED, charged, self.clock()
        self._changed(hold)
        self._entry(account, "capture", -charged, f"capture:{reference}", memo)
        return charged

    def release(self, reference: str, memo: dict[str, Any] | None = None) -> None:
        hold = self.holds.get(reference)
        if hold is None or hold.status != OPEN:
            return
        account = self._account_by_id(hold.account_id)
        account.change(held=-hold.amount)
        hold.status, hold.closed_at = RELEASED, self.clock()
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
                "created_at": self.clock(),
            }
        )

    # --- one write ----------------------------------------------------------------------
    async def flush(self) -> None:
        """Write every staged change: at most four executemany statements, whatever the
        batch size (new holds, changed holds, entries, accounts).

        Accounts get relative updates (``balance = balance + delta``: no lost update even
        where they were read unlocked), in id order (two books touching the same accounts
        never deadlock) and last (their row locks are held only until the commit that
        follows)."""
        changes = self.take_changes()
        if changes.new_holds:
            await self.session.execute(insert(HOLDS), changes.new_holds)
        if changes.changed_holds:
            await self.session.execute(
                HOLD_CHANGE, [{"b_" + k: v for k, v in h.items()} for h in changes.changed_holds]
            )
        if changes.entries:
            await self.session.execute(insert(ENTRIES), changes.entries)
        if changes.deltas:
            now = self.clock()
            await self.session.execute(
                ACCOUNT_DELTA,
                [
                    {"b_id": d["id"], "b_balance": d["balance"], "b_held": d["held"], "b_now": now}
                    for d in changes.deltas
                ],
            )

    def take_changes(self) -> Changes:
        """What the book has staged since its last flush (the account deltas in id
        order), handed over to be written: the book starts afresh."""
        changed = sorted((a for a in self.accounts.values() if a.balance_delta or a.held_delta), key=lambda a: a.id)
        changes = Changes(
            self.new_holds,
            list(self.changed_holds.values()),
            self.entries,
            [{"id": a.id, "balance": a.balance_delta, "held": a.held_delta} for a in changed],
        )
        self.new_holds, self.changed_holds, self.entries = [], {}, []
        for a in changed:
            a.balance_delta = a.held_delta = 0
        return changes


@dataclass(frozen=True)
class Changes:
    """A book's staged rows: ``billing_holds`` to insert and to update (by reference),
    ``billing_entries`` to insert, and each changed account's ``balance`` / ``held`` delta."""

    new_holds: list[dict[str, Any]]
    changed_holds: list[dict[str, Any]]
    entries: list[dict[str, Any]]
    deltas: list[dict[str, Any]]


ACCOUNTS, HOLDS, ENTRIES, USERS = table_of(Account), table_of(Hold), table_of(LedgerEntry), table_of(User)
ACCOUNT_DELTA = (
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == bindparam("b_id"))
    .values(
        balance=ACCOUNTS.c.balance + bindparam("b_balance"),
        held=ACCOUNTS.c.held + bindparam("b_held"),
        updated_at=bindparam("b_now"),
    )
)
HOLD_CHANGE = (
    update(HOLDS)
    .where(HOLDS.c.reference == bindparam("b_reference"))
    .values(
        amount=bindparam("b_amount"),
        status=bindparam("b_status"),
        captured=bindparam("b_captured"),
        closed_at=bindparam("b_closed_at"),
    )
)


# Locks follow core.transactions' order: accounts in id order, then holds in reference
# order. Accounts are locked FOR NO KEY UPDATE on PostgreSQL (``key_share``): the
# foreign-key checks of the holds and entries inserted beside them do not wait for it.
# SQLite has no row locks: its transactions start with BEGIN IMMEDIATE (core.db).
# Built once, with the lists as expanding parameters (``ids``, ``refs``): a statement
# built per call would coerce every value of its IN list and compute a new cache key.
ACCOUNTS_OF = (
    select(ACCOUNTS.c.id, ACCOUNTS.c.user_id, ACCOUNTS.c.balance, ACCOUNTS.c.held)
    .where(ACCOUNTS.c.user_id.in_(bindparam("ids", expanding=True)), ACCOUNTS.c.currency == bindparam("currency"))
    .order_by(ACCOUNTS.c.id)
)
ACCOUNTS_LOCKED = ACCOUNTS_OF.with_for_update(key_share=True)
# Each of ``ids`` that is a user, with its account's id, balance and held (NULL without
# one), the accounts locked: in a CTE, as PostgreSQL cannot lock the nullable side of an
# outer join.
LOCKED = ACCOUNTS_LOCKED.cte("locked")
USERS_ACCOUNTS = (
    select(USERS.c.id, LOCKED.c.id, LOCKED.c.balance, LOCKED.c.held)
    .select_from(USERS.outerjoin(LOCKED, LOCKED.c.user_id == USERS.c.id))
    .where(USERS.c.id.in_(bindparam("ids", expanding=True)))
)
# The holds named, locked, in reference order, with the fields of ``_Hold`` in order.
HOLDS_LOCKED = (
    select(
        HOLDS.c.reference,
        HOLDS.c.account_id,
        HOLDS.c.amount,
        HOLDS.c.status,
        HOLDS.c.captured,
        HOLDS.c.created_at,
        HOLDS.c.closed_at,
    )
    .where(HOLDS.c.reference.in_(bindparam("refs", expanding=True)))
    .order_by(HOLDS.c.reference)
    .with_for_update()
)


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

    def __init__(self, clock: Clock = system_clock) -> None:
        self.clock = clock

    async def topup(
        self, session: AsyncSession, user_id: str, currency: str, amount: int, reference: str, memo: Any = None
    ) -> bool:
        book = await Book(session, currency, self.clock).load([user_id])
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
