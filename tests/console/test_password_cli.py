"""``batchops user set-password``: the way an operator gives someone a console password."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchops.cli import app
from batchops.core.db import Database
from batchops.identity.schemas import UserIn
from batchops.identity.service import IdentityService
from batchops.migrate import upgrade
from batchops.settings import get_settings


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    upgrade(url)
    monkeypatch.setenv("BATCHOPS_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url  # type: ignore[misc]
    get_settings.cache_clear()


def identity_call(url: str, call: str, *args: object) -> object:
    async def run() -> object:
        db = Database(url)
        try:
            return await getattr(IdentityService(db), call)(*args)
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_the_cli_sets_a_password_read_from_stdin_and_refuses_an_unknown_user(database: str) -> None:
    identity_call(database, "upsert_users", [UserIn(user_id="ops-1")])
    result = CliRunner().invoke(app, ["user", "set-password", "ops-1", "--password-stdin"], input="long-enough-1\n")
    assert result.exit_code == 0 and "password set for ops-1" in result.output
    assert identity_call(database, "authenticate", "ops-1", "long-enough-1") is not None
    assert identity_call(database, "authenticate", "ops-1", "long-enough-2") is None
    result = CliRunner().invoke(app, ["user", "set-password", "nobody", "--password-stdin"], input="long-enough-1\n")
    assert result.exit_code == 1 and "error: User not found" in result.output
