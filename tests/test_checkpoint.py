"""SQLite's WAL is checkpointed in the background (``core.db.Checkpointer``), not inside
the COMMIT of whichever request takes it past SQLite's default 1,000 pages."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from batchops.core.db import WAL_AUTOCHECKPOINT_PAGES, Database
from batchops.migrate import upgrade


async def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    await db.start()
    try:
        async with db.transaction() as session:
            # a request's connection leaves checkpoints alone until far past the default
            limit = (await session.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
            assert limit == WAL_AUTOCHECKPOINT_PAGES
            await session.execute(text("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT)"))
            await session.execute(text("INSERT INTO filler (body) VALUES (:b)"), [{"b": "x" * 3000}] * 2000)
        assert db.checkpointer is not None
        for _ in range(3):  # the round under way at COMMIT may have seen only part of it
            if db.checkpointer.checkpointed_pages >= 1500:
                break
            await asyncio.wait_for(db.checkpointer.next_round(), timeout=5)
        assert db.checkpointer.checkpointed_pages >= 1500  # 2,000 rows of 3 KB: one page each
    finally:
        await db.dispose()
    assert db.checkpointer is None
