"""The KIE provider against a fake KIE HTTP server started on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from batchops.core.clock import ManualClock
from batchops.core.runtime import Runtime
from batchops.notifications.service import NotificationService
from batchops.studio.engine import Engine
from batchops.studio.kie import KieProvider
from tests.studio.conftest import KIE_CALLBACK_SECRET, run_until_idle, studio_user
from tests.studio.test_flow import balance, batch, submit


class FakeKie:
    def __init__(self) -> None:
        self.app = FastAPI()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.creates: list[dict[str, Any]] = []
        self.polls = 0
        self.rate_limit_next = 1
        # set: createTask answers only once the test opens it (the client times out first)
        self.answer_gate: threading.Event | None = None
        app = self.app

        @app.post("/api/v1/jobs/createTask")
        async def create(request: Request) -> dict[str, Any]:
            if request.headers.get("authorization") != "Bearer kie-test-key":
                return {"code": 401, "msg": "Unauthorized"}
            body = await request.json()
            if self.rate_limit_next:
                self.rate_limit_next -= 1
                return {"code": 429, "msg": "Too many requests"}
            self.creates.append(body)
            task_id = f"kie-{len(self.creates)}"
            self.tasks[task_id] = {"prompt": body["input"]["prompt"], "polls": 0}
            if self.answer_gate is not None:
                await asyncio.to_thread(self.answer_gate.wait, 30)
            return {"code": 200, "msg": "success", "data": {"taskId": task_id}}

        @app.get("/api/v1/jobs/recordInfo")
        async def record(taskId: str) -> dict[str, Any]:
            self.polls += 1
            task = self.tasks[taskId]
            task["polls"] += 1
            if task["polls"] < 3:
                return {"code": 200, "data": {"taskId": taskId, "state": "generating"}}
            if "violence" in task["prompt"]:
                data = {"taskId": taskId, "state": "fail", "failCode": "400", "failMsg": "content policy violation"}
                return {"code": 200, "data": data}
            result = json.dumps({"resultUrls": [f"https://cdn.kie.test/{taskId}.mp4"]})
            return {"code": 200, "data": {"taskId": taskId, "state": "success", "resultJson": result}}


@pytest.fixture
def fake_kie() -> Iterator[tuple[FakeKie, str]]:
    fake = FakeKie()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield fake, f"http://127.0.0.1:{port}"
    if fake.answer_gate is not None:
        fake.answer_gate.set()
    server.should_exit = True
    thread.join(timeout=10)


async def test_kie_provider_end_to_end(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, fake_kie: tuple[FakeKie, str]
) -> None:
    fake, url = fake_kie
    engine, provider = kie_engine(runtime, url, calls_back=False)
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    body = {
        "rows": [
            {"prompt": "a calm lake", "model": "sora-2-pro", "resolution": "1080p", "duration": 15},
            {"prompt": "graphic violence", "model": "sora-2", "resolution": "720p", "duration": 10},
            {"prompt": "a cat", "model": "sora-2", "imageUrl": "https://img.test/cat.png"},
        ]
    }
    accepted = await submit(client, user, body)
    try:
        await run_until_idle(engine)
    finally:
        await provider.close()
    view = await batch(client, user, accepted["batchId"])
    tasks = {t["prompt"]: t for t in view["tasks"]}
    assert tasks["a calm lake"]["status"] == "succeeded"
    assert tasks["a calm lake"]["resultUrl"].startswith("https://cdn.kie.test/")
    assert tasks["graphic violence"]["status"] == "failed"
    assert tasks["graphic violence"]["errorKind"] == "content_rejected"
    assert len(fake.creates) == 3  # one accepted creation per task: a rejected render is not retried
    assert tasks["a cat"]["status"] == "succeeded"
    assert sum(t["attempts"] for t in view["tasks"]) == 4  # the 429 was retried once
    models = {c["input"]["prompt"]: c for c in fake.creates}
    assert models["a calm lake"]["model"] == "sora-2-pro-text-to-video"
    assert models["a calm lake"]["input"]["size"] == "high" and models["a calm lake"]["input"]["n_frames"] == "15"
    assert models["a cat"]["model"] == "sora-2-image-to-video"
    assert models["a cat"]["input"]["image_urls"] == ["https://img.test/cat.png"]
    assert await balance(runtime, "u1") == (1000 - 130 - 15, 0)


async def test_kie_errors_are_classified(fake_kie: tuple[FakeKie, str]) -> None:
    from batchops.studio.providers import ProviderError, SubmitRequest

    _, url = fake_kie
    provider = KieProvider(url, "wrong-key")
    req = SubmitRequest("r1", "t1", "u1", "video", "sora-2", "720p", 10, "x", None)
    with pytest.raises(ProviderError) as raised:
        await provider.submit(req)
    assert raised.value.kind == "bad_request" and not raised.value.retryable
    await provider.close()
    down = KieProvider("http://127.0.0.1:9", "k", timeout_seconds=2)
    with pytest.raises(ProviderError) as raised:
        await down.submit(req)
    assert raised.value.retryable and not raised.value.maybe_sent  # never connected: safe to send again
    await down.close()


CALLBACK = "http://testserver/api/v1/workflow/providers/kie/callback"


def kie_engine(
    runtime: Runtime, url: str, *, calls_back: bool, timeout_seconds: float = 30.0
) -> tuple[Engine, KieProvider]:
    provider = KieProvider(
        url,
        "kie-test-key",
        timeout_seconds=timeout_seconds,
        callback_url=CALLBACK if calls_back else None,
        callback_key=KIE_CALLBACK_SECRET,
    )
    engine = Engine(runtime.db, provider, runtime.services.get(NotificationService), runtime.push, clock=runtime.clock)
    return engine, provider


async def crash_after_kie_answered(engine: Engine, n: int) -> None:
    """KIE accepted every createTask, then the worker died before committing the taskIds."""
    claims = await engine.admit()
    assert len(claims) == n
    for claim in claims:
        outcome = await engine.step(claim)
        assert outcome.kind == "submitted"  # KIE answered; the answer is lost with the worker
    assert isinstance(engine.clock, ManualClock)
    engine.clock.advance(engine.timing.lease_seconds + 1)  # the dead worker's leases run out


async def test_kie_crash_is_reconciled_by_callback_never_resubmitted(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, fake_kie: tuple[FakeKie, str]
) -> None:
    fake, url = fake_kie
    fake.rate_limit_next = 0
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    accepted = await submit(client, user, {"rows": [{"prompt": f"shot {i}", "model": "sora-2"} for i in range(2)]})
    engine, provider = kie_engine(runtime, url, calls_back=True)
    try:
        await crash_after_kie_answered(engine, 2)
        assert await engine.tick() == 2  # resumed: KIE cannot be asked, so they wait for its callback
        assert len(fake.creates) == 2
        view = await batch(client, user, accepted["batchId"])
        assert view["counts"]["running"] == 2  # still held against the plan: they may be rendering
        # a forged callback is refused and changes nothing
        r = await client.post(CALLBACK, params={"requestId": "x.1", "sig": "0" * 32}, json={"data": {"taskId": "k"}})
        assert r.status_code == 403
        for i, body in enumerate(fake.creates):  # KIE posts each task to the callBackUrl it was given
            r = await client.post(body["callBackUrl"], json={"code": 200, "data": {"taskId": f"kie-{i + 1}"}})
            assert r.status_code == 200 and r.json()["msg"] == "reconciled"
        await run_until_idle(engine)
    finally:
        await provider.close()
    view = await batch(client, user, accepted["batchId"])
    assert view["counts"]["succeeded"] == 2
    assert len(fake.creates) == 2  # each task reached KIE exactly once
    assert {t["resultUrl"] for t in view["tasks"]} == {
        "https://cdn.kie.test/kie-1.mp4",
        "https://cdn.kie.test/kie-2.mp4",
    }
    assert await balance(runtime, "u1") == (1000 - 30, 0)


async def test_kie_crash_without_callback_fails_unknown_and_returns_credits(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    fake_kie: tuple[FakeKie, str],
    clock: ManualClock,
) -> None:
    fake, url = fake_kie
    fake.rate_limit_next = 0
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    accepted = await submit(client, user, {"rows": [{"prompt": "shot", "model": "sora-2"}]})
    engine, provider = kie_engine(runtime, url, calls_back=True)
    try:
        await crash_after_kie_answered(engine, 1)
        assert await engine.tick() == 1  # waits for a callback that never comes
        # no callback within the render timeout (720p: 300 s) and a lease: its wait runs out
        clock.advance(300 + engine.timing.lease_seconds + 1)
        await run_until_idle(engine)
    finally:
        await provider.close()
    view = await batch(client, user, accepted["batchId"])
    task = view["tasks"][0]
    assert task["status"] == "failed" and task["errorKind"] == "unknown_submission"
    assert len(fake.creates) == 1  # never sent twice
    assert view["credits"] == {"held": 0, "spent": 0, "returned": 15}
    assert await balance(runtime, "u1") == (1000, 0)


@pytest.mark.parametrize("calls_back", [True, False])
async def test_a_createtask_whose_answer_is_lost_is_never_sent_again(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    fake_kie: tuple[FakeKie, str],
    calls_back: bool,
) -> None:
    """A createTask that KIE received but whose answer timed out is the crash case over
    the network: with a callback, the task waits for it; without one, it fails
    ``unknown_submission`` with its credits returned. A retry would render it twice."""
    fake, url = fake_kie
    fake.rate_limit_next, fake.answer_gate = 0, threading.Event()
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    accepted = await submit(client, user, {"rows": [{"prompt": "shot", "model": "sora-2"}]})
    engine, provider = kie_engine(runtime, url, calls_back=calls_back, timeout_seconds=0.3)
    try:
        assert await engine.tick() == 1
        assert len(fake.creates) == 1
        if calls_back:
            view = await batch(client, user, accepted["batchId"])
            assert view["counts"]["running"] == 1  # still held: KIE may be rendering it
            r = await client.post(fake.creates[0]["callBackUrl"], json={"code": 200, "data": {"taskId": "kie-1"}})
            assert r.status_code == 200 and r.json()["msg"] == "reconciled"
        await run_until_idle(engine)
    finally:
        await provider.close()
    task = (await batch(client, user, accepted["batchId"]))["tasks"][0]
    assert len(fake.creates) == 1  # sent once, whatever happened to the answer
    if calls_back:
        assert task["status"] == "succeeded" and task["resultUrl"] == "https://cdn.kie.test/kie-1.mp4"
        assert await balance(runtime, "u1") == (1000 - 15, 0)
    else:
        assert task["status"] == "failed" and task["errorKind"] == "unknown_submission"
        assert await balance(runtime, "u1") == (1000, 0)


async def test_a_callback_of_the_first_run_is_not_taken_for_a_retried_task(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    fake_kie: tuple[FakeKie, str],
    clock: ManualClock,
) -> None:
    """After retry-failed the task's new submission has a new request id: a (late) callback
    for the failed first submission does not hand the retried task that render."""
    fake, url = fake_kie
    fake.rate_limit_next = 0
    user = await studio_user(client, admin, "u1", plan="pro", credits=1000)
    accepted = await submit(client, user, {"rows": [{"prompt": "graphic violence", "model": "sora-2"}]})
    batch_id = accepted["batchId"]
    engine, provider = kie_engine(runtime, url, calls_back=True)
    try:
        await run_until_idle(engine)
        assert (await batch(client, user, batch_id))["tasks"][0]["errorKind"] == "content_rejected"
        clock.advance(301)  # the first run's render deadline (300 s) is past
        r = await client.post(f"/api/v1/workflow/batches/{batch_id}/retry-failed", headers=user)
        assert r.status_code == 200, r.text
        await crash_after_kie_answered(engine, 1)
        fake.tasks["kie-2"]["prompt"] = "a calm lake"  # this time it renders
        assert await engine.tick() == 1  # resumed: waits for KIE's callback
        first, second = (c["callBackUrl"] for c in fake.creates)
        assert first != second
        r = await client.post(first, json={"code": 200, "data": {"taskId": "kie-1"}})
        assert r.status_code == 200 and r.json()["msg"] == "ignored"
        r = await client.post(second, json={"code": 200, "data": {"taskId": "kie-2"}})
        assert r.status_code == 200 and r.json()["msg"] == "reconciled"
        await run_until_idle(engine)
    finally:
        await provider.close()
    task = (await batch(client, user, batch_id))["tasks"][0]
    assert task["status"] == "succeeded" and task["resultUrl"] == "https://cdn.kie.test/kie-2.mp4"
    assert len(fake.creates) == 2  # once per run
