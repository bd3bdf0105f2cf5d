"""Studio fixtures: an engine on the test runtime with a fast simulated clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batchops.core.runtime import Runtime
from batchops.studio.engine import Engine
from batchops.studio.providers import SimulatedProvider
from tests.conftest import auth
from tests.helpers import create_users, data

SCALE = 0.0005  # 60 s of provider time = 0.03 s


def make_engine(runtime: Runtime, *, failure_rate: float = 0.0, scale: float = SCALE, lease: float = 30.0) -> Engine:
    provider = SimulatedProvider(runtime.db, time_scale=scale, failure_rate=failure_rate)
    return Engine(
        runtime.db,
        runtime.services["ledger"],
        provider,
        runtime.services["notifications"],
        runtime.push,
        time_scale=scale,
        lease_seconds=lease,
    )


@pytest.fixture
def engine_factory(runtime: Runtime) -> Callable[..., Engine]:
    def factory(**kwargs: Any) -> Engine:
        return make_engine(runtime, **kwargs)

    return factory


async def studio_user(
    client: httpx.AsyncClient, admin: dict[str, str], user_id: str, *, plan: str = "pro", credits: int = 10_000
) -> dict[str, str]:
    await create_users(client, admin, [{"userId": user_id, "plan": plan}])
    if credits:
        r = await client.post(
            "/admin/billing/topup", json={"userId": user_id, "amount": credits, "currency": "CREDITS"}, headers=admin
        )
        data(r)
    return auth(user_id)


def rows(*specs: tuple[str, str, int], prompt: str = "a cat surfing") -> list[dict[str, Any]]:
    return [
        {"prompt": f"{prompt} #{i}", "model": m, "resolution": r, "duration": d} for i, (m, r, d) in enumerate(specs)
    ]
