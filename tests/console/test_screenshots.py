"""Screenshots are written only when asked for: a test run leaves the working tree alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import SCREENSHOTS_ENV, ConsoleServer, screenshot


class RecordingPage:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def screenshot(self, path: str, **_: Any) -> None:
        self.paths.append(path)


def server(engine: str) -> ConsoleServer:
    return ConsoleServer(engine, "http://127.0.0.1:1", "sqlite:///unused.db", {})


async def test_no_screenshot_is_taken_unless_a_directory_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page = RecordingPage()
    monkeypatch.delenv(SCREENSHOTS_ENV, raising=False)
    await screenshot(server("sqlite"), page, "overview")
    monkeypatch.setenv(SCREENSHOTS_ENV, "  ")
    await screenshot(server("sqlite"), page, "overview")
    assert page.paths == []
    shots = tmp_path / "shots"
    monkeypatch.setenv(SCREENSHOTS_ENV, str(shots))
    await screenshot(server("postgresql"), page, "overview")  # one set of files: SQLite's
    await screenshot(server("sqlite"), page, "overview")
    assert page.paths == [str(shots / "overview.png")] and shots.is_dir()
