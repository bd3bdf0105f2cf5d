"""Property-based contract test: schemathesis over the app's own OpenAPI schema.

Every operation gets generated requests (valid and invalid) with an admin bearer
token, on a fresh SQLite database; no response may be a 500 and every response
must match the schema the app publishes (status code documented, body conforms,
content type, headers), invalid input must be rejected with a 4xx, and auth must
not be ignored. Every check schemathesis has runs except
``positive_data_acceptance``: schema-valid input is legitimately refused by
business rules (duplicate ids in one batch, unknown users, no free device ...).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.migrate import upgrade
from tests.conftest import auth, make_settings

MAX_EXAMPLES = 12


async def _bootstrap(url: str) -> None:
    rt = build_runtime(make_settings(url))
    try:
        await rt.services["identity"].ensure_admin("admin")
    finally:
        await rt.stop()


DIRECTORY = Path(tempfile.mkdtemp(prefix="batchops-schemathesis-"))
DATABASE_URL = f"sqlite:///{DIRECTORY / 'batchops.db'}"
# Built at import: schemathesis reads /openapi.json from the app to generate the tests.
APP = create_app(make_settings(DATABASE_URL))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# The admin's real token goes with every call: generated (and, for negative cases, mutated)
# values of the declared security schemes would be replaced by it anyway.
schema.config.generation.update(with_security_parameters=False)


@pytest.fixture(scope="module", autouse=True)
def database() -> Iterator[None]:
    upgrade(DATABASE_URL)
    asyncio.run(_bootstrap(DATABASE_URL))
    yield
    shutil.rmtree(DIRECTORY, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_contract(case: Any) -> None:
    case.call_and_validate(headers=auth("admin"), excluded_checks=[positive_data_acceptance])
