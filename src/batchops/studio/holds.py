"""Credits held per task in the ledger (billing's ``Book``, currency ``CREDITS``): held when
the task is accepted, captured when it succeeds, released when it fails or is cancelled."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from batchops.billing.ledger import CREDITS, Book, InsufficientBalance


def hold_reference(task_id: str) -> str:
    return f"studio:{task_id}"


async def hold_all(session: AsyncSession, user_id: str, holds: list[tuple[str, int]]) -> None:
    """One hold per task, all or none: the whole batch's total is checked first (403 with the shortfall)."""
    book = await Book(session, CREDITS).load([user_id], hold_references=[ref for ref, _ in holds])
    needed = sum(amount for _, amount in holds)
    available = book.balance(user_id).available
    if needed > available:
        raise InsufficientBalance(CREDITS, needed, available)
    for ref, amount in holds:
        book.hold(user_id, amount, ref, {"source": "studio"})
    await book.flush()


async def release_all(session: AsyncSession, user_id: str, refs: list[str]) -> None:
    if not refs:
        return
    book = await Book(session, CREDITS).load([user_id], hold_references=refs)
    for ref in refs:
        book.release(ref)
    await book.flush()
