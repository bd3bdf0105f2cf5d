"""Property-based contract test: schemathesis over the app's own OpenAPI schema.

Every operation gets generated requests (valid and invalid) with an admin bearer
token and the service token, on a fresh SQLite database; no response may be a 500
and every response must match the schema the app publishes (status code documented,
body conforms, content type, headers), invalid input must be rejected with a 4xx, and
auth must not be ignored.

A second run generates only schema-valid requests and requires the server to take
each (``positive_data_acceptance``: no 400/422): the schema states every constraint
the server enforces, so a client generated from it sends nothing the server refuses.
The exceptions are the few rules no JSON Schema can state; each is in
``BUSINESS_RULES`` with the reason, and stated in the operation's description.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext, positive_data_acceptance

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.identity.service import IdentityService
from batchops.migrate import upgrade
from tests.conftest import SERVICE_TOKEN, auth, make_settings

MAX_EXAMPLES = 12
POSITIVE_EXAMPLES = 8

# Refusals (400) of schema-valid requests that no schema can prevent: operation -> message patterns.
BUSINESS_RULES: dict[str, tuple[str, ...]] = {
    # "in the future, within N days" depends on the moment of the request, not on the text
    "POST /scheduler/reservations": (r"^startAt (must|may) be",),
    # uniqueness of one key among the items (JSON Schema's uniqueItems compares whole items)
    "POST /admin/users/batch": (r"^Duplicate userId",),
    "POST /api/dining/departments/batch": (r"^Duplicate departmentId",),
    "POST /api/dining/menus/batch": (r"^Duplicate date \+ mealType",),
    # the caller's plan sets the batch size (a row of the users table); a price exists per
    # model x resolution x duration (the schema lists each value, not the priced triples)
    "POST /api/v1/workflow/batch-generate": (r"^Batch size \d+ exceeds", r"No price for"),
    # an order of two fields within one usage report (seed 001 数据流: validated before priced)
    "POST /api/internal/metering/device-usage": (r"durationSeconds exceeds", r"releasedAt must not be before"),
    "POST /api/internal/metering/device-usage/batch": (r"durationSeconds exceeds", r"releasedAt must not be before"),
}


def accepted_but_for_business_rules(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    if response.status_code == 400:
        message = response.json().get("message", "")
        if any(re.search(rule, message) for rule in BUSINESS_RULES.get(case.operation.label, ())):
            return None
    return positive_data_acceptance(ctx, response, case)


async def _bootstrap(url: str) -> None:
    rt = build_runtime(make_settings(url))
    try:
        await rt.services.get(IdentityService).ensure_admin("admin")
    finally:
        await rt.stop()


DIRECTORY = Path(tempfile.mkdtemp(prefix="batchops-schemathesis-"))
DATABASE_URL = f"sqlite:///{DIRECTORY / 'batchops.db'}"
# Built at import: schemathesis reads /openapi.json from the app to generate the tests.
APP = create_app(make_settings(DATABASE_URL))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
positive_schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
positive_schema.config.generation.update(modes=[GenerationMode.POSITIVE])
# The credentials are real ones, sent with every call: generated (and, for negative cases,
# mutated) values of the declared security schemes would be replaced by them anyway.
for each in (schema, positive_schema):
    each.config.generation.update(with_security_parameters=False)


def credentials() -> dict[str, str]:
    return {**auth("admin"), "X-Service-Token": SERVICE_TOKEN}


@pytest.fixture(scope="module", autouse=True)
def database() -> Iterator[None]:
    upgrade(DATABASE_URL)
    asyncio.run(_bootstrap(DATABASE_URL))
    yield
    shutil.rmtree(DIRECTORY, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_contract(case: Any) -> None:
    case.call_and_validate(
        headers=auth("admin"),
        excluded_checks=[positive_data_acceptance],
        additional_checks=[accepted_but_for_business_rules],
    )


@positive_schema.parametrize()
@settings(max_examples=POSITIVE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_valid_requests_are_accepted(case: Any) -> None:
    case.call_and_validate(headers=credentials(), checks=[accepted_but_for_business_rules])
