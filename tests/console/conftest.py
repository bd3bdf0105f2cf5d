"""Browser tests of the console: Debian's chromium driven by Playwright (its Python
package ships the driver; no browser is ever downloaded) against a real ``batchops
serve`` subprocess, one per database for the whole session (every browser module shares
it, so each test makes its own users), and one browser for the session.

Locally a missing ``/usr/bin/chromium`` skips them (``make browser`` installs it); under
CI=true it fails them, like any other missing service.

Screenshots for the README are taken only when ``BATCHOPS_SCREENSHOTS`` names a directory
(``make screenshots``): a test run leaves the working tree as it found it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import text, update

from batchops.core.auth import create_token
from batchops.core.db import Database
from batchops.identity.models import User
from tests.conftest import JWT_SECRET, SERVICE_TOKEN, fresh_postgres_database, require_service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS_ENV = "BATCHOPS_SCREENSHOTS"
AXE = Path(__file__).parent / "axe.min.js"
ADMIN_PASSWORD = "operator-password-1"
USER_PASSWORD = "device-user-password-1"
DEVICE_USER = "dev-user"
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process console tests hash with argon2's lowest costs (the default takes ~0.3 s
    of CPU per hash here); a hash carries its parameters, so verifying follows them."""
    from argon2 import PasswordHasher

    from batchops.identity import passwords

    monkeypatch.setattr(passwords, "HASHER", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))


# Passwords set by the tests are hashed with argon2's lowest costs (the default costs ~0.3 s
# of CPU per hash here); a hash carries its parameters, so the server verifies it the same way.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@dataclass
class ConsoleServer:
    engine: str
    base_url: str
    database_url: str
    env: dict[str, str]
    storage: dict[str, Any] = field(default_factory=dict)  # signed-in browser state per user
    passwords: dict[str, str] = field(default_factory=dict)
    db: Database | None = None  # the server's database, for what no API sets

    async def set_password(self, user_id: str, password: str) -> None:
        """What ``batchops user set-password`` does, without a process per call."""
        assert self.db is not None
        async with self.db.transaction() as session:
            await session.execute(
                update(User).where(User.id == user_id).values(password_hash=CHEAP_HASHER.hash(password))
            )
        self.passwords[user_id] = password

    async def users(self, *users: dict[str, Any], password: str | None = None) -> None:
        """Create (or update) users through the admin API, each with ``password`` if given."""
        await self.api("POST", "/admin/users/batch", {"users": list(users)})
        for user in users if password else ():
            await self.set_password(user["userId"], password or "")

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        return await self.api_as("admin", method, path, body)

    async def api_as(self, user_id: str, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {create_token(user_id, JWT_SECRET)}"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30) as c:
            r = await c.request(method, path, json=body)
        assert r.status_code < 300, r.text
        return r.json()["data"]

    async def scalar(self, query: str, **params: Any) -> Any:
        """One value read from the server's database."""
        assert self.db is not None
        async with self.db.read() as session:
            return await session.scalar(text(query), params)


def require_chromium() -> None:
    if not CHROMIUM.exists():
        require_service("Chromium", f"{CHROMIUM} not found (make browser installs Debian's chromium)")


def start_server(env: dict[str, str], port: int, log: Any) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "batchops.cli", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log, stderr=log)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def console_server(request: pytest.FixtureRequest) -> AsyncIterator[ConsoleServer]:
    require_chromium()
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="batchops-console-"))
            url = f"sqlite:///{directory}/console.db"
        else:
            url = await stack.enter_async_context(fresh_postgres_database("batchops_console"))
        port = _free_port()
        env = {
            **os.environ,
            "BATCHOPS_DATABASE_URL": url,
            "BATCHOPS_JWT_SECRET": JWT_SECRET,
            "BATCHOPS_SERVICE_TOKEN": SERVICE_TOKEN,
            "BATCHOPS_CONSOLE_SECRET": "console-test-secret-of-32-bytes-or-more",
            "BATCHOPS_BOOTSTRAP_ADMIN": "admin",
            "BATCHOPS_BATCH_PROGRESS_INTERVAL_SECONDS": "0",  # a push per item: the bar moves visibly
            "BATCHOPS_BATCH_RATE_LIMIT_PER_MINUTE": "0",
            "BATCHOPS_BILLING_ENFORCE_BALANCE": "false",
            # the simulated provider renders a 60 s video in 1.2 s, and the engine looks often
            "BATCHOPS_SIM_TIME_SCALE": "0.02",
            "BATCHOPS_STUDIO_TICK_SECONDS": "0.2",
            "BATCHOPS_OUTBOX_POLL_SECONDS": "0.1",
            "BATCHOPS_LOG_LEVEL": "WARNING",
        }
        server = ConsoleServer(request.param, f"http://127.0.0.1:{port}", url, env)
        log = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack closes it
        process = start_server(env, port, log)
        stack.callback(_stop, process)
        server.db = Database(url)
        stack.push_async_callback(server.db.dispose)
        await _wait_healthy(server.base_url, process, log)
        await server.set_password("admin", ADMIN_PASSWORD)
        await server.users({"userId": DEVICE_USER, "name": "Device User"}, password=USER_PASSWORD)
        yield server


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as c:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"batchops serve exited: {log.read().decode(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    pytest.fail("batchops serve did not become healthy")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        await chromium.close()


@dataclass
class Pages:
    """Opens pages for a test and records every JavaScript error they log."""

    browser: Any
    server: ConsoleServer
    errors: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    # Statuses a test provokes on purpose (a refused page): the browser logs "Failed to load
    # resource" for them, which is the server's answer, not a script's error.
    expected_statuses: set[int] = field(default_factory=set)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        refused = re.search(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if refused and int(refused.group(1)) in self.expected_statuses:
            return
        self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    async def open(self, user: str | None = "admin", *, locale: str = "en-US", width: int = 1280) -> Any:
        state = await self._signed_in_state(user) if user else None
        context = await self.browser.new_context(
            base_url=self.server.base_url,
            locale=locale,
            extra_http_headers={"Accept-Language": locale},
            viewport={"width": width, "height": 860},
            storage_state=state,
            bypass_csp=True,  # axe-core is injected with add_script_tag (an inline script)
        )
        self.contexts.append(context)
        page = await context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        return page

    async def _signed_in_state(self, user: str) -> Any:
        """Sign in through the form once per user and server; later pages reuse the cookie."""
        if user not in self.server.storage:
            context = await self.browser.new_context(base_url=self.server.base_url)
            page = await context.new_page()
            await page.goto("/console/signin")
            await page.fill("input[name=userId]", user)
            await page.fill("input[name=password]", self.server.passwords[user])
            await page.click("button[type=submit]")
            await page.wait_for_url("**/console/**")
            assert "/signin" not in page.url
            self.server.storage[user] = await context.storage_state()
            await context.close()
        return self.server.storage[user]

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def pages(browser: Any, console_server: ConsoleServer) -> AsyncIterator[Pages]:
    opened = Pages(browser, console_server)
    yield opened
    await opened.close()
    assert not opened.errors, opened.errors


async def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it stands."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def screenshot_dir() -> Path | None:
    """Where screenshots go when asked for (``BATCHOPS_SCREENSHOTS``), else None."""
    directory = os.environ.get(SCREENSHOTS_ENV, "").strip()
    return Path(directory) if directory else None


async def screenshot(server: ConsoleServer, page: Any, name: str) -> None:
    """Kept for the README when asked for, from the SQLite run only (one set of files)."""
    directory = screenshot_dir()
    if directory is not None and server.engine == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


Poll = Callable[[], Awaitable[bool]]
