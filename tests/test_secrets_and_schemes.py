"""Secrets (issue 16 #13) and the security schemes /docs needs for "Try it out" (issue 17
#1): tokens need ``exp``, the KIE callback has its own secret, default secrets serve
loopback only, and every protected operation declares its scheme."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from batchops import cli
from batchops.app import OPEN_PATHS, create_app
from batchops.assembly import build_runtime
from batchops.settings import DEFAULT_JWT_SECRET, DEFAULT_SERVICE_TOKEN, Settings, get_settings
from batchops.studio.providers import callback_signature
from tests.conftest import JWT_SECRET, SERVICE_TOKEN, make_settings
from tests.helpers import create_users, data, error

QUERY = "/scheduler/allocations/batch/query"
CALLBACK = "/api/v1/workflow/providers/kie/callback"
CONSOLE = "BATCHOPS_CONSOLE_SECRET"


async def test_a_token_without_exp_is_refused(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    forever = jwt.encode({"sub": "admin", "iat": datetime.now(UTC)}, JWT_SECRET, algorithm="HS256")
    for method, path in [("GET", "/admin/users/admin"), ("POST", QUERY)]:
        response = await client.request(
            method, path, json={"userIds": ["u1"]}, headers={"Authorization": f"Bearer {forever}"}
        )
        assert error(response, 401, "UnauthorizedException")["message"] == "Invalid token: no exp claim"
    data(await client.get("/admin/users/admin", headers=admin))


# --- OpenAPI security schemes (/docs "Authorize") ----------------------------------------------------
async def test_openapi_declares_both_schemes_on_every_protected_operation(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["serviceToken"] == {**schemes["serviceToken"], "type": "apiKey", "in": "header"}
    assert schemes["serviceToken"]["name"] == "X-Service-Token"
    open_paths = {"/health", CALLBACK}
    assert open_paths <= set(OPEN_PATHS)
    operations = [(p, m, op) for p, item in document["paths"].items() for m, op in item.items()]
    assert len(operations) > 40
    for path, method, operation in operations:
        expected = (
            None
            if path in open_paths
            else [{"serviceToken": []}]
            if path.startswith("/api/internal/")
            else [{"bearerAuth": []}]
        )
        assert operation.get("security") == expected, (method, path)
        # the headers are the schemes' now, not parameters each operation repeats
        assert not [p for p in operation.get("parameters", []) if p["in"] == "header"], (method, path)


async def test_docs_try_it_out_sends_what_the_schemes_declare(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """What Swagger UI sends once a token is pasted into Authorize: the declared header."""
    data(await client.get("/admin/users/admin", headers=admin))
    await create_users(client, admin, [{"userId": "u1"}])
    data(await client.get("/api/internal/balance/user/u1", headers={"X-Service-Token": SERVICE_TOKEN}))


# --- secrets ------------------------------------------------------------------------------------------
async def test_the_kie_callback_is_signed_with_its_own_secret(database_url: str) -> None:
    secret = "kie-callback-secret-for-tests"
    for configured, good, bad in [(secret, secret, JWT_SECRET), (None, JWT_SECRET, "")]:
        rt = build_runtime(make_settings(database_url, kie_callback_secret=configured))
        app = create_app(rt.settings, rt)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                body = {"data": {"taskId": "kie-1"}}
                for key in (good, bad):
                    url = f"{CALLBACK}?requestId=req-1&sig={callback_signature(key, 'req-1') if key else 'x'}"
                    response = await c.post(url, json=body)
                    if configured and key == good:
                        assert response.json() == {"code": 200, "msg": "ignored"}  # signed; no such task
                    else:  # the JWT secret signs no callback; without a secret none is accepted
                        error(response, 403, "ForbiddenException")
        finally:
            await rt.stop()


def test_a_callback_url_needs_its_secret() -> None:
    with pytest.raises(ValidationError, match="BATCHOPS_KIE_CALLBACK_SECRET"):
        Settings(kie_callback_url="https://batchops.example.com/api/v1/workflow/providers/kie/callback")
    Settings(kie_callback_url="https://x.example/cb", kie_callback_secret="0123456789abcdef")


def test_default_secrets_serve_loopback_only() -> None:
    defaults = Settings(jwt_secret=DEFAULT_JWT_SECRET, service_token=DEFAULT_SERVICE_TOKEN)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert defaults.serving_problem(host) is None, host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "batchops.example.com"):
        problem = defaults.serving_problem(host)
        assert problem, host
        assert all(name in problem for name in ("BATCHOPS_JWT_SECRET", "BATCHOPS_SERVICE_TOKEN", CONSOLE)), host
    one_default = Settings(jwt_secret="x" * 32, service_token=DEFAULT_SERVICE_TOKEN, console_secret="z" * 32)
    problem = one_default.serving_problem("0.0.0.0")
    assert problem and "BATCHOPS_SERVICE_TOKEN" in problem and "BATCHOPS_JWT_SECRET" not in problem
    assert CONSOLE not in problem
    configured = Settings(jwt_secret="x" * 32, service_token="y" * 32, console_secret="z" * 32)
    assert configured.serving_problem("0.0.0.0") is None


def test_serve_refuses_a_public_address_with_default_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.append(options))
    monkeypatch.setattr(cli.migrations, "upgrade", lambda url: None)
    monkeypatch.setattr("batchops.app.create_app", lambda settings: object())
    for name in ("BATCHOPS_JWT_SECRET", "BATCHOPS_SERVICE_TOKEN", CONSOLE):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        refused = CliRunner().invoke(cli.app, ["serve", "--host", "0.0.0.0"])
        demo = CliRunner().invoke(cli.app, ["serve"])  # make run: loopback, no set-up
        monkeypatch.setenv("BATCHOPS_JWT_SECRET", "s" * 32)
        monkeypatch.setenv("BATCHOPS_SERVICE_TOKEN", "t" * 32)
        monkeypatch.setenv(CONSOLE, "c" * 32)
        get_settings.cache_clear()
        configured = CliRunner().invoke(cli.app, ["serve", "--host", "0.0.0.0"])
    finally:
        get_settings.cache_clear()
    assert refused.exit_code == 1
    assert "BATCHOPS_JWT_SECRET" in refused.output and "BATCHOPS_SERVICE_TOKEN" in refused.output
    assert demo.exit_code == 0 and configured.exit_code == 0, (demo.output, configured.output)
    assert [options["host"] for options in served] == ["127.0.0.1", "0.0.0.0"]
