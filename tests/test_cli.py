"""The ``batchops`` command for a newcomer (issue 17): one database in a fixed place, an
expected failure in a line or two (a traceback only with ``--debug``), ``demo --reset``,
help that tells the truth."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner, Result

from batchops.cli import app
from batchops.cli.errors import CliError
from batchops.migrate import upgrade
from batchops.settings import Settings, get_settings
from tests.conftest import fresh_postgres_database, make_settings
from tests.helpers import sql_value

SECRET = "cli-test-secret-of-at-least-32-bytes!"


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each command reads the environment it is given (``get_settings`` caches)."""
    for name in list(os.environ):
        if name.startswith("BATCHOPS_") and not name.startswith("BATCHOPS_TEST_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str, **env: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300", **env})


def lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the default database -----------------------------------------------------------------------
def test_the_default_database_is_in_the_users_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    database = tmp_path / "data" / "batchops" / "batchops.db"
    assert Settings().database_url == f"sqlite:///{database}"

    result = run("migrate")
    assert result.exit_code == 0, result.output
    assert database.exists() and str(database) in result.output
    result = run("billing", "reconcile")
    assert result.exit_code == 0, result.output
    assert list(elsewhere.iterdir()) == []  # nothing made where the command ran


# --- a database that is not migrated -------------------------------------------------------------
@pytest.mark.parametrize("command", [("billing", "reconcile"), ("billing", "replay"), ("worker",)])
def test_a_command_on_a_missing_database_says_so_and_creates_nothing(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "nothing.db"
    result = run(*command, BATCHOPS_DATABASE_URL=f"sqlite:///{path}")
    assert result.exit_code == 1
    assert lines(result) == [f"error: the database sqlite:///{path} does not exist", "run `batchops migrate`"]
    assert not path.exists()


def test_a_command_on_an_unmigrated_or_old_database_names_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = run("billing", "reconcile", BATCHOPS_DATABASE_URL=f"sqlite:///{empty}")
    assert result.exit_code == 1 and "has no schema" in lines(result)[0], result.output
    old = tmp_path / "old.db"
    upgrade(f"sqlite:///{old}", "0001_initial")
    result = run("billing", "reconcile", BATCHOPS_DATABASE_URL=f"sqlite:///{old}")
    assert result.exit_code == 1, result.output
    assert "is at revision 0001_initial, the newest is" in lines(result)[0]
    assert lines(result)[1] == "run `batchops migrate`"
    assert "Traceback" not in result.output


# --- expected failures: one or two lines, a traceback only with --debug ---------------------------
def test_a_bad_setting_is_one_line_and_debug_shows_the_traceback() -> None:
    result = run("billing", "reconcile", BATCHOPS_SIM_TIME_SCALE="fast")
    assert result.exit_code == 1
    assert lines(result)[0].startswith("error: invalid setting: BATCHOPS_SIM_TIME_SCALE: ")
    assert len(lines(result)) == 2 and "Traceback" not in result.output
    result = run("--debug", "billing", "reconcile", BATCHOPS_SIM_TIME_SCALE="fast")
    assert result.exit_code == 1 and "error:" not in result.output
    assert type(result.exception).__name__ == "ValidationError"  # raised, for the traceback


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nothing"
    result = run("billing", "reconcile", BATCHOPS_DATABASE_URL=url)
    assert result.exit_code == 1
    assert lines(result)[0].startswith(f"error: cannot connect to the database {url}: ")
    assert len(lines(result)) == 2


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("prompt\na fox\n")
    url = f"http://127.0.0.1:{closed_port()}"
    result = run("studio", "submit", str(rows), "--url", url, "--token", "t")
    assert result.exit_code == 1
    assert lines(result)[0].startswith(f"error: cannot reach batchops at {url}: ")
    assert "make run" in lines(result)[1] and len(lines(result)) == 2
    result = run("--debug", "studio", "submit", str(rows), "--url", url, "--token", "t")
    assert type(result.exception).__name__ == "ConnectError"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read {path}: No such file or directory"),
        ("prompt,duration\na fox,10\na cat,ten\n", "{path}, line 3: duration 'ten' is not a number of seconds"),
        ("prompt,model\na fox,sora-2\n,sora-2\n", "{path}, line 3: no prompt"),
        ("Prompt,resolutoin\na fox,720p\n", "{path}, line 1: the first line must name the columns, prompt among them"),
        ("prompt\n", "{path}: no rows under the header"),
    ],
    ids=["missing", "bad-duration", "no-prompt", "unknown-column", "empty"],
)
def test_a_bad_csv_is_one_line_naming_the_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "rows.csv"
    if content is not None:
        path.write_text(content)
    # a closed port: the file is judged before any request
    result = run("studio", "submit", str(path), "--url", f"http://127.0.0.1:{closed_port()}", "--token", "t")
    assert result.exit_code == 1
    assert lines(result)[0].startswith("error: " + message.format(path=path)), result.output
    assert len(lines(result)) <= 2 and "Traceback" not in result.output


def test_the_csv_format_is_documented_in_the_help_and_the_example_reads() -> None:
    from batchops.cli.studio import read_rows

    help_text = run("studio", "submit", "--help").output
    for column in ("prompt", "model", "resolution", "duration", "imageUrl", "examples/studio-rows.csv"):
        assert column in help_text
    assert "Only prompt is required" in help_text
    rows, line_numbers = read_rows(Path(__file__).parents[1] / "examples" / "studio-rows.csv")
    assert len(rows) == 3 and line_numbers == [2, 3, 4]
    assert rows[1] == {"prompt": "A neon-lit city street in the rain at night", "resolution": "720p", "duration": 15}


def test_an_unexpected_failure_is_one_line_too() -> None:
    from batchops.cli.errors import explain

    error = explain(ZeroDivisionError("division by zero"))
    assert error.message == "unexpected error: ZeroDivisionError: division by zero"
    assert error.hint is not None and "--debug" in error.hint
    assert explain(CliError("x", "y")).hint == "y"


# --- help and output that tell the truth ---------------------------------------------------------
def test_token_hours_default_is_the_configured_ttl() -> None:
    help_text = run("token", "--help").output
    assert "default: 0" not in help_text and "BATCHOPS_JWT_TTL_HOURS (24)" in help_text

    def lifetime(result: Result) -> int:
        claims = jwt.decode(result.output.strip(), SECRET, algorithms=["HS256"])
        return int(claims["exp"] - claims["iat"])

    assert lifetime(run("token", "u1", BATCHOPS_JWT_SECRET=SECRET)) == 24 * 3600
    assert lifetime(run("token", "u1", BATCHOPS_JWT_SECRET=SECRET, BATCHOPS_JWT_TTL_HOURS="5")) == 5 * 3600
    assert lifetime(run("token", "u1", "--hours", "2", BATCHOPS_JWT_SECRET=SECRET)) == 2 * 3600


def test_reconcile_prints_no_empty_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.db'}"
    upgrade(url)
    result = run("billing", "reconcile", BATCHOPS_DATABASE_URL=url)
    assert result.exit_code == 0, result.output
    assert lines(result) == ["0 released allocations never charged"]


# --- demo --reset --------------------------------------------------------------------------------
# the demo's alloc-001…005 by name: LIKE 'alloc-00%' would also match a random alloc-00<hex> id
NAMED = ", ".join(f"'alloc-{i:03d}'" for i in range(1, 6))


async def released_demo_allocations(url: str) -> int:
    from batchops.assembly import build_runtime

    rt = build_runtime(make_settings(url))
    try:
        return int(
            await sql_value(rt, f"SELECT count(*) FROM allocations WHERE id IN ({NAMED}) AND status = 'released'")
        )
    finally:
        await rt.stop()


async def release_demo_allocations(url: str) -> None:
    from batchops.assembly import build_runtime
    from tests.helpers import execute

    rt = build_runtime(make_settings(url))
    try:
        await execute(rt, f"UPDATE allocations SET status = 'released' WHERE id IN ({NAMED})")
    finally:
        await rt.stop()


async def check_reset(url: str) -> None:
    result = await asyncio.to_thread(run, "demo", BATCHOPS_DATABASE_URL=url)
    assert result.exit_code == 0, result.output
    await release_demo_allocations(url)  # as seed scenario 2 does
    assert await released_demo_allocations(url) == 5
    result = await asyncio.to_thread(run, "demo", "--reset", BATCHOPS_DATABASE_URL=url)
    assert result.exit_code == 0, result.output
    assert "reset: " in result.output and "alloc-001…005" in result.output
    assert await released_demo_allocations(url) == 0


async def test_demo_reset_reloads_into_a_fresh_sqlite_file(tmp_path: Path) -> None:
    await check_reset(f"sqlite:///{tmp_path / 'demo.db'}")


async def test_demo_reset_reloads_into_a_fresh_postgresql_schema() -> None:
    async with fresh_postgres_database("batchops_cli") as url:
        await check_reset(url)
