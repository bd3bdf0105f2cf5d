"""`batchops studio submit rows.csv --watch` against a real `batchops serve` (SQLite, embedded worker)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from batchops.cli import app
from batchops.core.auth import create_token

SECRET = "cli-test-secret-of-at-least-32-bytes!"


def test_cli_submit_and_watch(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "BATCHOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "BATCHOPS_JWT_SECRET": SECRET,
        "BATCHOPS_BOOTSTRAP_ADMIN": "admin",
        "BATCHOPS_SIM_TIME_SCALE": "0.001",
        "BATCHOPS_STUDIO_TICK_SECONDS": "0.05",
        "BATCHOPS_OUTBOX_POLL_SECONDS": "0.05",
        "BATCHOPS_BATCH_RATE_LIMIT_PER_MINUTE": "0",
        "BATCHOPS_LOG_LEVEL": "WARNING",
    }
    exe = Path(sys.executable).parent / "batchops"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([str(exe), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        admin = {"Authorization": f"Bearer {create_token('admin', SECRET)}"}
        users = [{"userId": "maker", "plan": "pro"}, {"userId": "broke", "plan": "pro"}]
        r = httpx.post(f"{url}/admin/users/batch", json={"users": users}, headers=admin)
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{url}/admin/billing/topup", json={"userId": "maker", "amount": 500, "currency": "CREDITS"}, headers=admin
        )
        assert r.status_code == 200, r.text
        rows = tmp_path / "rows.csv"
        rows.write_text("prompt,resolution,duration\na fox in snow,,\na city at night,720p,15\n[reject] bad,,\n")
        token = create_token("maker", SECRET)
        args = ["studio", "submit", str(rows), "--model", "sora-2", "--url", url, "--token", token]
        result = CliRunner().invoke(app, [*args, "--watch", "--interval", "0.1"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "accepted" in result.output and "50 credits held" in result.output
        assert "completed" in result.output and "content_rejected" in result.output
        too_many = tmp_path / "many.csv"
        too_many.write_text("prompt\n" + "x\n" * 16)
        result = CliRunner().invoke(app, ["studio", "submit", str(too_many), "--url", url, "--token", token])
        assert result.exit_code == 1
        assert result.output.splitlines() == [
            "error: Batch size 16 exceeds the pro plan's limit of 15 (400 BadRequestException)",
            "field=rows, max=15, given=16, plan=pro",
        ]
        # the API's message and its details, and how to top up
        broke = create_token("broke", SECRET)
        result = CliRunner().invoke(app, [*args[:-1], broke], env={"COLUMNS": "300"})
        assert result.exit_code == 1
        assert result.output.splitlines() == [
            "error: Insufficient balance: need 50 credits, have 0 (403 ForbiddenException)",
            'top up with POST /admin/billing/topup {"userId": "broke", "amount": 50, "currency": "CREDITS"}'
            " (an admin's token)",
        ]
        result = CliRunner().invoke(app, [*args[:-1], create_token("maker", "another-secret-of-32-bytes-or-more!")])
        assert result.exit_code == 1
        assert result.output.splitlines()[0] == "error: Invalid token (401 UnauthorizedException)"
        assert "batchops token" in result.output.splitlines()[1]
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
    started = (tmp_path / "serve.log").read_text()
    assert started.startswith(f"database: {env['BATCHOPS_DATABASE_URL']}\n")  # where the data is
    assert "Context impl" not in started and "Running upgrade" not in started  # no Alembic chatter
