"""The README stays true: its settings table is the settings, every ``batchops`` command it
names exists, and every example in it works as written after ``make run``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import typer

from batchops.cli import app
from batchops.settings import Settings
from tests.helpers import wait_until_healthy

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_code() -> list[str]:
    """Every code block and inline code span of the README."""
    blocks = [body for _, body in FENCED.findall(README)]
    prose = FENCED.sub("", README)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def settings_variables() -> set[str]:
    """The environment variable of every setting (for an aliased one, its ``BATCHOPS_`` name)."""
    names = set()
    for name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None)
        names |= {a for a in aliases if a.startswith("BATCHOPS_")} if aliases else {f"BATCHOPS_{name.upper()}"}
    return names


def table_variables() -> set[str]:
    section = README.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`(BATCHOPS_\w+)`", row.split("|")[1])}


def test_the_configuration_table_is_the_settings() -> None:
    documented, defined = table_variables(), settings_variables()
    assert not defined - documented, f"settings missing from the README's table: {sorted(defined - documented)}"
    assert not documented - defined, f"README rows naming no setting: {sorted(documented - defined)}"


def test_every_batchops_command_the_readme_names_exists() -> None:
    root = typer.main.get_command(app)
    named = set()
    for code in readme_code():
        code = code.replace(".venv/bin/batchops", "batchops")
        for m in re.finditer(r"(?<![\w/.-])batchops((?:\s+--?[a-z-]+)*)\s+([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?", code):
            named.add((m.group(2), m.group(3)))
    assert {("studio", "submit"), ("billing", "reconcile"), ("demo", None)} <= named, named
    missing = []
    for command, sub in sorted(named, key=str):
        found = root.commands.get(command)  # type: ignore[attr-defined]
        if found is None:
            missing.append(command)
        elif sub and hasattr(found, "commands") and sub not in found.commands:
            missing.append(f"{command} {sub}")
    assert not missing, f"the README names commands batchops does not have: {missing}"


def test_readme_first_screen_shows_run_and_test() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make run" in first_screen and "make test" in first_screen


# --- the examples, as written, against `make run` ----------------------------------------------------
def examples() -> list[str]:
    """The ``bash`` blocks meant to be run in a second terminal (not the ``make`` targets)."""
    blocks = [body for lang, body in FENCED.findall(README) if lang == "bash"]
    return [b for b in blocks if not b.lstrip().startswith("make ")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_every_readme_example_works_after_make_run(tmp_path: Path) -> None:
    blocks = examples()
    assert len(blocks) >= 5, blocks  # scheduler, billing, dining, studio, CLI
    port = free_port()
    # a newcomer's environment: no BATCHOPS_* of ours, the default database in a data directory
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOPS_")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), COLUMNS="200")
    log_path = tmp_path / "make-run.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            ["make", "-s", "run", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make and the server it starts stop together
        )
    try:
        wait_until_healthy(server, port, log_path, within=180)
        started = log_path.read_text()
        assert "admin token: " in started
        assert f"database: sqlite:///{tmp_path / 'data' / 'batchops' / 'batchops.db'}" in started
        assert "Context impl" not in started

        for block in blocks:
            script = block.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            began = time.monotonic()
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=ROOT,
                env={**env, "BATCHOPS_URL": f"http://127.0.0.1:{port}"},  # the studio CLI's default, moved
                capture_output=True,
                text=True,
                timeout=120,
            )
            took = time.monotonic() - began
            said = f"{block}\n--- stdout:\n{done.stdout}\n--- stderr:\n{done.stderr}"
            assert done.returncode == 0, said
            assert '"success":false' not in done.stdout, said
            if "curl" in block:  # one answer per call (the billing block's loop calls twice)
                assert done.stdout.count('"success":true') == block.count("curl") + block.count("for attempt"), said
            if "studio submit" in block:
                assert "completed" in done.stdout and "50 credits held" in done.stdout, said
                assert took < 30, f"a 3-row batch took {took:.0f} s under make run"
            if "batch-orders" in block:
                assert '"failedCount":0' in done.stdout, said
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
