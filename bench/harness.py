"""Shared bench harness: a real ``batchops serve`` subprocess, an admin client, timing, tables.

    async with Server.start("sqlite") as server:       # or "postgresql"
        r = await server.client.post("/scheduler/...", json=...)
        t = await timed(lambda: work(), reps=30, before=reset)
        table = CompareTable("title", ["batch API", "SQL floor"], floor="SQL floor")
        table.add("allocate 50", {"batch API": t, "SQL floor": floor})
        table.print()

The server runs on a free loopback port against a fresh database (a temp SQLite
file, or a fresh PostgreSQL database on 127.0.0.1:5432 dropped afterwards), with
its own JWT secret, a bootstrap admin and the batch rate limit off.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from batchops.core.auth import create_token
from batchops.migrate import upgrade

PG_ADMIN_URL = os.environ.get("BATCHOPS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
JWT_SECRET = "bench-secret-" + "x" * 32
ADMIN = "bench-admin"
ENGINES = ("sqlite", "postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _database(url: str, name: str) -> str:
    return url.rpartition("/")[0] + "/" + name


@dataclass
class Server:
    """A ``batchops serve`` subprocess; use ``async with Server.start(engine)``."""

    engine: str
    database_url: str
    port: int
    workdir: Path
    worker: bool = True
    env: dict[str, str] = field(default_factory=dict)
    serve_args: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    client: httpx.AsyncClient = field(init=False)
    _pg_name: str | None = None

    @classmethod
    def start(
        cls,
        engine: str = "sqlite",
        *,
        worker: bool = True,
        env: Mapping[str, str] | None = None,
        serve_args: list[str] | None = None,
    ) -> Server:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        workdir = Path(tempfile.mkdtemp(prefix="batchops-bench-"))
        pg_name = f"bench_{uuid.uuid4().hex[:10]}" if engine == "postgresql" else None
        url = _database(PG_ADMIN_URL, pg_name) if pg_name else f"sqlite:///{workdir / 'bench.db'}"
        server = cls(
            engine, url, free_port(), workdir, worker, dict(env or {}), list(serve_args or []), _pg_name=pg_name
        )
        return server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sqlite_path(self) -> str:
        """The database file (SQLite only), for a plain-SQL floor measured beside the API."""
        return self.database_url.removeprefix("sqlite:///")

    @property
    def pg_dsn(self) -> str:
        """The asyncpg DSN (PostgreSQL only)."""
        return self.database_url

    def token(self, user_id: str = ADMIN) -> str:
        return create_token(user_id, JWT_SECRET)

    def headers(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id)}"}

    async def __aenter__(self) -> Server:
        if self._pg_name:
            conn = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await conn.execute(f'CREATE DATABASE "{self._pg_name}"')
            finally:
                await conn.close()
        env = {
            **os.environ,
            "BATCHOPS_DATABASE_URL": self.database_url,
            "BATCHOPS_JWT_SECRET": JWT_SECRET,
            "BATCHOPS_BOOTSTRAP_ADMIN": ADMIN,
            "BATCHOPS_BATCH_RATE_LIMIT_PER_MINUTE": "0",
            "BATCHOPS_LOG_LEVEL": "WARNING",
            **self.env,
        }
        cmd = [sys.executable, "-m", "batchops.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if not self.worker:
            cmd.append("--no-worker")
        cmd += self.serve_args
        with (self.workdir / "server.log").open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        self.client = httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token()}"}, timeout=60
        )
        try:
            await self._wait_healthy()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _wait_healthy(self, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"batchops serve exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                r = await self.client.get("/health", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"batchops serve not healthy after {limit}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.client.aclose()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._pg_name:
            conn = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')
            finally:
                await conn.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- a lean HTTP client for timed calls -----------------------------------------------------------------
@dataclass
class Reply:
    method: str
    path: str
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class KeepAlive:
    """A minimal HTTP/1.1 keep-alive client: one connection, one request at a time.

    The load generator shares the 2 cores with the server. httpx's async client costs
    1.5–6 ms per call here (encode/httpx#3215), as much as a whole batch query, and a
    timed row would count that as the server's slowness; this writes the request bytes
    and reads one response (0.4 ms round trip to a bare endpoint). Timed calls use it;
    set-up keeps ``Server.client`` (httpx)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, server: Server, headers: Mapping[str, str] | None = None) -> KeepAlive:
        base = {"Host": f"127.0.0.1:{server.port}", "Authorization": f"Bearer {server.token()}"}
        client = cls(server.port, {**base, **(headers or {})})
        await client._connect()
        return client

    async def _connect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> Reply:
        if self.reader is None or self.reader.at_eof():  # the server closed an idle connection
            await self._connect()
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\n{self.headers}Content-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1]) for line in raw.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return Reply(method, path, status, await self.reader.readexactly(length))

    async def post(self, path: str, json: Any = None, body: bytes | None = None) -> Reply:
        """POST ``json`` (encoded here) or ready ``body`` bytes."""
        return await self.request("POST", path, body if body is not None else _dumps(json))

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Reply:
        return await self.request("GET", f"{path}?{urlencode(params)}" if params else path)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def fresh_database(sqlite: bool) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A migrated database for benches that run the runtime in-process (no server):
    a temp SQLite file, or a new PostgreSQL database; returns (url, drop)."""
    if sqlite:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='batchops-bench-')}/bench.db"

        async def nothing() -> None:
            return None

        await asyncio.to_thread(upgrade, url)
        return url, nothing
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = _database(PG_ADMIN_URL, name)

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    await asyncio.to_thread(upgrade, url)
    return url, drop


# --- timing ------------------------------------------------------------------------------------------
@dataclass
class Timing:
    samples: list[float]  # milliseconds

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


async def timed(
    work: Callable[[], Awaitable[Any]],
    reps: int,
    *,
    before: Callable[[], Awaitable[Any]] | None = None,
    after: Callable[[], Awaitable[Any]] | None = None,
    warmup: int = 2,
) -> Timing:
    """Run ``work`` ``warmup + reps`` times; time only ``work`` (``before``/``after`` reset state)."""
    samples: list[float] = []
    for i in range(warmup + reps):
        if before is not None:
            await before()
        started = time.perf_counter()
        await work()
        elapsed = (time.perf_counter() - started) * 1000
        if after is not None:
            await after()
        if i >= warmup:
            samples.append(elapsed)
    return Timing(samples)


# --- tables -----------------------------------------------------------------------------------------
Cell = Timing | float | None


@dataclass
class CompareTable:
    """Rows side by side: each column a Timing (median / p95) or a fixed figure in ms, plus the
    ratio of every column's median to the ``floor`` column's, plus free text columns (verdicts)."""

    title: str
    columns: list[str]
    floor: str | None = None
    notes: list[str] = field(default_factory=list)
    rows: list[tuple[str, Mapping[str, Cell], Mapping[str, str]]] = field(default_factory=list)

    def add(self, label: str, cells: Mapping[str, Cell], text: Mapping[str, str] | None = None) -> None:
        self.rows.append((label, cells, dict(text or {})))

    @staticmethod
    def value(cell: Cell) -> float | None:
        return cell.median if isinstance(cell, Timing) else cell

    def ratio(self, cells: Mapping[str, Cell], column: str) -> float | None:
        top, bottom = self.value(cells.get(column)), self.value(cells.get(self.floor or ""))
        return top / bottom if top is not None and bottom else None

    def render(self) -> Table:
        table = Table(title=escape(self.title), caption=escape("\n".join(self.notes)) or None)
        table.add_column("operation", justify="left")
        text_columns = list(dict.fromkeys(k for _, _, t in self.rows for k in t))
        timed_columns = {c for c in self.columns for _, cells, _ in self.rows if isinstance(cells.get(c), Timing)}
        ratio_columns = [c for c in self.columns if self.floor and c != self.floor and c in timed_columns]
        for c in self.columns:  # a column of fixed figures (e.g. a published one) has no p95
            table.add_column(f"{c}\n{'median / p95 ms' if c in timed_columns else 'ms'}", justify="right")
        for c in ratio_columns:
            table.add_column(f"{c}\n÷ {self.floor}", justify="right")
        for c in text_columns:
            table.add_column(c, justify="center")
        for label, cells, text in self.rows:
            row = [label]
            for c in self.columns:
                cell = cells.get(c)
                if isinstance(cell, Timing):
                    row.append(f"{cell.median:.2f} / {cell.p95:.2f}")
                else:
                    row.append("—" if cell is None else f"{cell:g}")
            for c in ratio_columns:
                r = self.ratio(cells, c)
                row.append("—" if r is None else f"{r:.2f}x")
            for c in text_columns:
                verdict = text.get(c, "")
                style = "green" if verdict.startswith("PASS") else "red" if verdict.startswith("FAIL") else ""
                row.append(f"[{style}]{verdict}[/{style}]" if style else verdict)
            table.add_row(*row)
        return table

    def print(self, console: Console | None = None) -> None:
        (console or Console(width=200)).print(self.render())
