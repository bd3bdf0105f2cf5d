"""The ledger's ``Book`` on its own: holds, captures, releases, charges and top-ups in
memory, then one flush, checked against the rows it writes (temp-file SQLite)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from batchops.billing.ledger import CNY, CREDITS, Balance, Book, InsufficientBalance, Ledger
from batchops.billing.models import CAPTURED, OPEN, RELEASED, Account, Hold, LedgerEntry
from batchops.core.clock import ManualClock
from batchops.core.db import Database
from batchops.core.errors import BadRequestError, ConflictError
from tests.unit.sqlite_db import add_users, temp_database

# Entries whose amount is their effect on the balance (hold and release entries tell the held side).
BALANCE_KINDS = ("topup", "capture", "charge")
_users = itertools.count()


@pytest.fixture(scope="module")
async def db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    async with temp_database(tmp_path_factory.mktemp("ledger")) as database:
        yield database


async def new_users(db: Database, n: int = 1) -> list[str]:
    """Users no other test (or hypothesis example) has touched."""
    ids = [f"u{next(_users)}" for _ in range(n)]
    await add_users(db, ids)
    return ids


async def funded_book(db: Database, user: str, amount: int, currency: str = CNY) -> Book:
    async with db.transaction() as session:
        book = await Book(session, currency).load([user])
        book.topup(user, amount, f"topup:{user}")
        await book.flush()
    return book


async def stored(db: Database, user: str, currency: str = CNY) -> tuple[int, int, list[tuple[str, int, str]]]:
    """The account's balance and held, and its entries (kind, amount, reference), as written."""
    async with db.transaction() as session:
        account = (
            await session.scalars(select(Account).where(Account.user_id == user, Account.currency == currency))
        ).one()
        entries = (
            await session.execute(
                select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.reference)
                .where(LedgerEntry.account_id == account.id)
                .order_by(LedgerEntry.id)
            )
        ).all()
    return account.balance, account.held, [tuple(e) for e in entries]


# --- one operation at a time ---------------------------------------------------------------------
async def test_a_hold_sets_money_aside_and_a_capture_charges_the_use_and_frees_the_rest(db: Database) -> None:
    (user,) = await new_users(db)
    await funded_book(db, user, 1000)
    async with db.transaction() as session:
        book = await Book(session, CNY).load([user])
        book.hold(user, 600, "alloc-1")
        assert (book.balance(user).balance, book.balance(user).held, book.balance(user).available) == (1000, 600, 400)
        assert book.capture("alloc-1", 250) == 250
        balance = book.balance(user)
        assert (balance.balance, balance.held, balance.available) == (750, 0, 750)
        await book.flush()
    assert await stored(db, user) == (
        750,
        0,
        [("topup", 1000, f"topup:{user}"), ("hold", 600, "hold:alloc-1"), ("capture", -250, "capture:alloc-1")],
    )
    async with db.transaction() as session:
        hold = await session.get(Hold, "alloc-1")
        assert hold is not None and (hold.amount, hold.status, hold.captured) == (600, CAPTURED, 250)
        assert hold.closed_at is not None


async def test_a_hold_beyond_the_available_balance_fails_with_the_amounts_and_leaves_no_trace(db: Database) -> None:
    (user,) = await new_users(db)
    await funded_book(db, user, 1000)
    async with db.transaction() as session:
        book = await Book(session, CNY).load([user])
        book.hold(user, 700, "a")
        with pytest.raises(InsufficientBalance) as raised:
            book.hold(user, 301, "b")
        assert (raised.value.needed, raised.value.available, raised.value.shortfall) == (301, 300, 1)
        assert raised.value.status_code == 403 and raised.value.message == "Insufficient balance"
        assert raised.value.details == [{"needed": 3.01, "available": 3.0, "shortfall": 0.01, "currency": CNY}]
        with pytest.raises(InsufficientBalance) as raised:
            book.add_to_hold("a", 301)
        assert (raised.value.needed, raised.value.available) == (301, 300)
        book.hold(user, 300, "c")  # exactly what is left is fine
        assert book.balance(user).available == 0
        await book.flush()
    balance, held, entries = await stored(db, user)
    assert (balance, held) == (1000, 1000)
    assert [ref for _, _, ref in entries] == [f"topup:{user}", "hold:a", "hold:c"]  # nothing of "b"


async def test_credits_shortfall_is_in_whole_credits(db: Database) -> None:
    (user,) = await new_users(db)
    await funded_book(db, user, 40, CREDITS)
    async with db.transaction() as session:
        book = await Book(session, CREDITS).load([user])
        with pytest.raises(InsufficientBalance) as raised:
            book.hold(user, 130, "studio:t1")
    assert raised.value.details == [{"needed": 130, "available": 40, "shortfall": 90, "currency": CREDITS}]


async def test_add_to_hold_raises_an_open_hold_only(db: Database) -> None:
    (user,) = await new_users(db)
    await funded_book(db, user, 1000)
    async with db.transaction() as session:
        book = await Book(session, CNY).load([user])
        book.hold(user, 100, "ext")
        book.add_to_hold("ext", 50)
        book.add_to_hold("ext", 50)
        book.add_to_hold("ext", 0)  # nothing to add
        book.add_to_hold("ext", -20)  # never shrinks
        book.add_to_hold("missing", 50)
        assert book.balance(user).held == 200
        book.release("ext")
        book.add_to_hold("ext", 50)  # closed: left alone
        assert book.balance(user).held == 0
        await book.flush()
    _, _, entries = await stored(db, user)
    assert entries[1:] == [
        ("hold", 100, "hold:ext"),
        ("hold", 50, "hold:ext:150"),
        ("hold", 50, "hold:ext:200"),
        ("release", 0, "release:ext"),
    ]


async def test_a_capture_frees_exactly_what_was_held_and_charges_what_was_used(db: Database) -> None:
    (user,) = await new_users(db)
    await funded_book(db, user, 1000)
    async with db.transaction() as session:
        book = await Book(session, CNY).load([user])
        book.hold(user, 300, "under")
        book.hold(user, 300, "free")
        book.hold(user, 300, "over")
        assert book.capture("under", 120) == 120
        assert book.capture("free", -5) == 0  # a use that cost nothing charges nothing
        # Usage that ran past its estimate is charged in full (a charge is never lost);
        # the hold frees exactly its own amount, so held never goes below zero.
        assert book.capture("over", 450) == 450
        assert book.balance(user) == Balance(1000 - 120 - 450, 0)
        assert book.capture("under", 120) is None  # already captured
        assert book.capture("never-held", 10) is None
        await book.flush()
    assert (await stored(db, user))[:2] == (430, 0)


async def test_release_frees_the_hold_and_charges_nothing(db: Database) -> None:
    (user,) = await new_users(db)
    await funded_book(db, user, 500)
    async with db.transaction() as session:
        book = await Book(session, CNY).load([user])
        book.hold(user, 500, "r")
        book.release("r")
        book.release("r")  # twice: once
        assert book.capture("r", 100) is None  # a released hold cannot be captured
        assert (book.balance(user).balance, book.balance(user).held) == (500, 0)
        await book.flush()
    balance, held, entries = await stored(db, user)
    assert (balance, held) == (500, 0)
    assert [kind for kind, _, _ in entries] == ["topup", "hold", "release"]


async def test_replayed_references_change_nothing_even_after_a_reload(db: Database) -> None:
    user, other = await new_users(db, 2)
    await funded_book(db, user, 1000)
    async with db.transaction() as session:
        book = await Book(session, CNY).load([user, other])
        book.hold(user, 100, "h")
        book.hold(user, 999_999, "h")  # the same hold again: not judged, not taken
        book.hold(other, 5, "h")  # a hold reference names one hold, whoever asks
        book.charge(user, 30, "usage:x")
        book.charge(user, 30, "usage:x")
        assert book.topup(user, 50, "topup:y") is True
        assert book.topup(user, 50, "topup:y") is False
        await book.flush()
    async with db.transaction() as session:  # a new book knows them from the database
        book = await Book(session, CNY).load([user, other], hold_references=["h"])
        await book.load_references(["usage:x", "topup:y"])
        book.hold(user, 100, "h")
        book.charge(user, 30, "usage:x")
        assert book.topup(user, 50, "topup:y") is False
        await book.flush()
    balance, held, entries = await stored(db, user)
    assert (balance, held) == (1000 - 30 + 50, 100)
    assert [ref for _, _, ref in entries] == [f"topup:{user}", "hold:h", "usage:x", "topup:y"]
    assert (await stored(db, other))[:2] == (0, 0)


async def test_a_charge_may_overdraw_and_bad_amounts_are_refused(db: Database) -> None:
    (user,) = await new_users(db)
    async with db.transaction() as session:
        book = await Book(session, CNY).load([user])
        book.charge(user, 70, "usage:late")  # usage happened: it is owed even without money
        assert book.balance(user).balance == -70
        with pytest.raises(BadRequestError):
            book.topup(user, 0, "topup:zero")
        with pytest.raises(BadRequestError):
            book.hold(user, -1, "negative")
        await book.flush()
    assert (await stored(db, user))[:2] == (-70, 0)


async def test_load_known_tells_unknown_users_apart_and_creates_missing_accounts(db: Database) -> None:
    (user,) = await new_users(db)
    async with db.transaction() as session:
        book = Book(session, CNY)
        assert await book.load_known([user, "nobody"]) == {user}
        book.charge(user, 10, f"usage:{user}")
        await book.flush()
    assert (await stored(db, user))[:2] == (-10, 0)


async def test_the_book_stamps_its_rows_by_the_clock_it_is_given(db: Database) -> None:
    (user,) = await new_users(db)
    await funded_book(db, user, 1000)
    clock = ManualClock()
    opened = clock()
    async with db.transaction() as session:
        book = await Book(session, CNY, clock).load([user])
        book.hold(user, 300, "timed")
        await book.flush()
    closed = clock.advance(minutes=30)
    async with db.transaction() as session:
        book = await Book(session, CNY, clock).load([user], hold_references=["timed"])
        book.capture("timed", 100)
        await book.flush()
    async with db.transaction() as session:
        hold = (await session.scalars(select(Hold).where(Hold.reference == "timed"))).one()
        stamps = dict(
            (
                await session.execute(
                    select(LedgerEntry.kind, LedgerEntry.created_at).where(LedgerEntry.reference.like("%:timed"))
                )
            ).all()
        )
    assert (hold.created_at, hold.closed_at) == (opened, closed)
    assert stamps == {"hold": opened, "capture": closed}


async def test_ledger_topup_refuses_a_reference_reused_for_another_amount(db: Database) -> None:
    (user,) = await new_users(db)
    ledger = Ledger()
    async with db.transaction() as session:
        assert await ledger.topup(session, user, CNY, 500, "key-1") is True
    async with db.transaction() as session:
        assert await ledger.topup(session, user, CNY, 500, "key-1") is False  # the same top-up again
    with pytest.raises(ConflictError):
        async with db.transaction() as session:
            await ledger.topup(session, user, CNY, 900, "key-1")
    async with db.transaction() as session:
        balances = await ledger.balances(session, [user, "nobody"], CNY)
    assert (balances[user].balance, balances["nobody"].balance) == (500, 0)


# --- any sequence of operations ---------------------------------------------------------------------
@dataclass
class ModelHold:
    user: int
    amount: int
    status: str = OPEN
    captured: int = 0


@dataclass
class Model:
    """What the ledger must come to, computed the plain way."""

    balance: list[int] = field(default_factory=lambda: [0, 0])
    held: list[int] = field(default_factory=lambda: [0, 0])
    holds: dict[str, ModelHold] = field(default_factory=dict)
    references: set[str] = field(default_factory=set)
    entries: list[list[tuple[str, int, str]]] = field(default_factory=lambda: [[], []])
    may_owe: list[bool] = field(default_factory=lambda: [False, False])  # charged beyond what it held


USER = st.integers(0, 1)
HOLD = st.sampled_from(["h0", "h1", "h2", "h3"])
OPERATION = st.one_of(
    st.tuples(st.just("topup"), USER, st.integers(-5, 500), st.sampled_from(["topup:0", "topup:1", "topup:2"])),
    st.tuples(st.just("hold"), USER, st.integers(-5, 400), HOLD),
    st.tuples(st.just("add"), st.integers(-10, 200), HOLD),
    st.tuples(st.just("capture"), st.integers(-10, 500), HOLD),
    st.tuples(st.just("release"), HOLD),
    st.tuples(st.just("charge"), USER, st.integers(0, 200), st.sampled_from(["usage:0", "usage:1"])),
    st.tuples(st.just("flush")),  # write what is staged, keep using the same book
    st.tuples(st.just("commit")),  # write, commit, and go on with a new book read back from the database
)


def expect(model: Model, op: tuple[Any, ...]) -> tuple[type[Exception] | None, Any]:
    """Apply ``op`` to the model; the exception the book must raise (state unchanged), or what it returns."""
    kind = op[0]
    if kind == "topup":
        _, u, amount, ref = op
        if amount <= 0:
            return BadRequestError, None
        if ref in model.references:
            return None, False
        model.references.add(ref)
        model.balance[u] += amount
        model.entries[u].append(("topup", amount, ref))
        return None, True
    if kind == "charge":
        _, u, amount, ref = op
        if ref not in model.references:
            model.references.add(ref)
            model.balance[u] -= amount
            model.may_owe[u] = model.may_owe[u] or amount > 0
            model.entries[u].append(("charge", -amount, ref))
        return None, None
    if kind == "hold":
        _, u, amount, ref = op
        if amount < 0:
            return BadRequestError, None
        if ref in model.holds:
            return None, None
        if model.balance[u] - model.held[u] < amount:
            return InsufficientBalance, (amount, model.balance[u] - model.held[u])
        model.held[u] += amount
        model.holds[ref] = ModelHold(u, amount)
        model.entries[u].append(("hold", amount, f"hold:{ref}"))
        return None, None
    hold = model.holds.get(op[-1])
    is_open = hold is not None and hold.status == OPEN
    if kind == "add":
        _, amount, ref = op
        if hold is None or not is_open or amount <= 0:
            return None, None
        available = model.balance[hold.user] - model.held[hold.user]
        if available < amount:
            return InsufficientBalance, (amount, available)
        model.held[hold.user] += amount
        hold.amount += amount
        model.entries[hold.user].append(("hold", amount, f"hold:{ref}:{hold.amount}"))
        return None, None
    if kind == "capture":
        _, amount, ref = op
        if hold is None or not is_open:
            return None, None
        charged = max(0, amount)
        model.balance[hold.user] -= charged
        model.held[hold.user] -= hold.amount
        model.may_owe[hold.user] = model.may_owe[hold.user] or charged > hold.amount
        hold.status, hold.captured = CAPTURED, charged
        model.entries[hold.user].append(("capture", -charged, f"capture:{ref}"))
        return None, charged
    assert kind == "release"
    (_, ref) = op
    if hold is not None and is_open:
        model.held[hold.user] -= hold.amount
        hold.status = RELEASED
        model.entries[hold.user].append(("release", 0, f"release:{ref}"))
    return None, None


def apply(book: Book, users: list[str], op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind == "topup":
        return book.topup(users[op[1]], op[2], op[3])
    if kind == "charge":
        return book.charge(users[op[1]], op[2], op[3])
    if kind == "hold":
        return book.hold(users[op[1]], op[2], op[3])
    if kind == "add":
        return book.add_to_hold(op[2], op[1])
    if kind == "capture":
        return book.capture(op[2], op[1])
    return book.release(op[1])


def check_invariants(book: Book, model: Model, users: list[str]) -> None:
    for u, user in enumerate(users):
        balance = book.balance(user)
        assert (balance.balance, balance.held) == (model.balance[u], model.held[u])
        assert balance.available == balance.balance - balance.held
        assert balance.held == sum(h.amount for h in model.holds.values() if h.user == u and h.status == OPEN)
        assert balance.held >= 0
        if not model.may_owe[u]:  # only usage that happened may take an account below zero
            assert balance.balance >= 0 and balance.available >= 0


async def check_stored(db: Database, model: Model, users: list[str]) -> None:
    """After the commit: the rows say what the model says, and the entries add up to the balance."""
    for u, user in enumerate(users):
        balance, held, entries = await stored(db, user)
        assert (balance, held) == (model.balance[u], model.held[u])
        assert entries == model.entries[u]
        assert sum(amount for kind, amount, _ in entries if kind in BALANCE_KINDS) == balance
    async with db.transaction() as session:
        rows = (await session.scalars(select(Hold).where(Hold.reference.in_(list(model.holds))))).all()
        account_ids = dict(
            (await session.execute(select(Account.id, Account.user_id).where(Account.user_id.in_(users)))).all()
        )
    assert {
        h.reference: (users.index(account_ids[h.account_id]), h.amount, h.status, h.captured)
        for h in rows
        if h.account_id in account_ids
    } == {ref: (h.user, h.amount, h.status, h.captured) for ref, h in model.holds.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPERATION, max_size=25))
async def test_any_sequence_of_operations_keeps_the_accounts_straight(db: Database, ops: list[Any]) -> None:
    users = await new_users(db, 2)
    # references are per example: the same name in two examples would be one hold, one entry
    ops = [op if op[0] in ("flush", "commit") else (*op[:-1], f"{users[0]}:{op[-1]}") for op in ops]
    segments: list[list[Any]] = [[]]
    for op in ops:
        if op[0] == "commit":
            segments.append([])
        else:
            segments[-1].append(op)
    model = Model()
    for segment in segments:
        async with db.transaction() as session:
            book = await Book(session, CNY).load(users, hold_references=list(model.holds))
            await book.load_references(model.references)
            check_invariants(book, model, users)
            for op in segment:
                if op[0] == "flush":
                    await book.flush()
                else:
                    error, expected = expect(model, op)
                    if error is None:
                        assert apply(book, users, op) == expected
                    else:
                        with pytest.raises(error) as raised:
                            apply(book, users, op)
                        if isinstance(raised.value, InsufficientBalance):
                            assert (raised.value.needed, raised.value.available) == expected
                check_invariants(book, model, users)
            await book.flush()
        await check_stored(db, model, users)
