"""Studio scheduling math without a database: when a task is polled, retried, timed out,
and how a batch's concurrency follows its failures (seed 003 §3 错误 Fallback / 智能轮询).

The outcome-to-row rule (``outcomes.apply_outcome``, what ``record`` writes per outcome)
and the provider step (``ProviderCalls.step``) are driven with plain task objects, a fake
provider and a ManualClock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchops.core.clock import ManualClock
from batchops.studio.claims import Claim, Outcome
from batchops.studio.config import (
    DEGRADE_MIN_OUTCOMES,
    IMAGE_RENDER_SECONDS,
    RENDER_SECONDS,
    degraded_concurrency,
    get_polling_config,
    retry_backoff,
)
from batchops.studio.models import FAILED, QUEUED, RUNNING, SUBMITTING, SUCCEEDED, StudioBatch, StudioTask
from batchops.studio.outcomes import apply_outcome
from batchops.studio.provider_calls import ProviderCalls
from batchops.studio.providers import (
    BAD_REQUEST,
    CONTENT_REJECTED,
    RATE_LIMITED,
    RETRYABLE_KINDS,
    SERVER_ERROR,
    TIMEOUT,
    UNKNOWN_SUBMISSION,
    ProviderError,
    Status,
    SubmitRequest,
    expected_render_seconds,
    submission_id,
)
from batchops.studio.timing import Timing

T0 = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)


class FakeProvider:
    name = "fake"

    def __init__(self, *, status: Status | Exception = Status("running"), finds: bool = True) -> None:
        self.answer = status
        self.finds_by_request_id, self.calls_back = finds, False
        self.found: str | None = None
        self.submit_error: ProviderError | None = None
        self.submitted: list[SubmitRequest] = []
        self.cancelled: list[str] = []

    async def submit(self, req: SubmitRequest) -> str:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append(req)
        return f"job-{len(self.submitted)}"

    async def find(self, request_id: str) -> str | None:
        return self.found

    async def status(self, provider_task_id: str) -> Status:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def cancel(self, provider_task_id: str) -> None:
        self.cancelled.append(provider_task_id)

    async def close(self) -> None:
        return None


def calls(provider: FakeProvider, clock: ManualClock | None = None) -> ProviderCalls:
    return ProviderCalls(provider, clock or ManualClock(T0))


def task(
    model: str = "sora-2",
    resolution: str | None = "720p",
    duration: int | None = 10,
    *,
    generation_type: str = "video",
    state: str = RUNNING,
    attempts: int = 1,
    submitted_at: datetime | None = T0,
    deadline_at: datetime | None = None,
) -> StudioTask:
    return StudioTask(
        id="task-1",
        batch_id="batch-1",
        user_id="u1",
        index=0,
        generation_type=generation_type,
        model=model,
        resolution=resolution,
        duration=duration,
        prompt="a cat",
        image_url=None,
        credits=15,
        hold_ref="studio:task-1",
        state=state,
        attempts=attempts,
        polls=0,
        request_id="task-1.1.abc",
        provider_task_id="job-1" if state == RUNNING else None,
        submitted_at=submitted_at,
        deadline_at=deadline_at,
        history=[],
        started_at=T0,
    )


def batch(limit: int, maximum: int | None = None) -> StudioBatch:
    return StudioBatch(
        id="batch-1",
        user_id="u1",
        plan="pro",
        concurrency_limit=limit,
        max_concurrency=maximum or limit,
        recent_outcomes=[],
        degradations=0,
    )


def apply(
    timing: Timing, t: StudioTask, kind: str, at: datetime, b: StudioBatch | None = None, **outcome: Any
) -> tuple[dict[str, Any], list[tuple[str, int]], list[str]]:
    """The task's new values, and the credits the outcome captures and releases."""
    change = apply_outcome(Outcome(Claim(t), kind, at, **outcome), b or batch(3), timing)
    return change.values, [change.capture] if change.capture else [], [change.release] if change.release else []


# --- polling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "resolution", "duration"), list(RENDER_SECONDS))
def test_the_first_poll_comes_at_75_percent_of_the_typical_render(model: str, resolution: str, duration: int) -> None:
    values, _, _ = apply(Timing(), task(model, resolution, duration, state=SUBMITTING), "submitted", T0)
    assert values["state"] == RUNNING and values["submitted_at"] == T0
    assert values["due_at"] - T0 == timedelta(seconds=0.75 * RENDER_SECONDS[(model, resolution, duration)])
    timeout = 900 if resolution == "1080p" else 300  # 720P: 5 分钟, 1080P: 15 分钟
    assert values["deadline_at"] - T0 == timedelta(seconds=timeout)


def test_an_image_is_first_polled_after_75_percent_of_its_render() -> None:
    values, _, _ = apply(
        Timing(), task("nano-banana", None, None, generation_type="image", state=SUBMITTING), "submitted", T0
    )
    assert values["due_at"] - T0 == timedelta(seconds=0.75 * IMAGE_RENDER_SECONDS)


@pytest.mark.parametrize(
    ("model", "resolution", "duration", "ladder"),
    [
        # seconds since the first poll → seconds to the next one: 720P 3s → 5s → 8s
        ("sora-2", "720p", 10, [(0, 3), (59, 3), (60, 5), (179, 5), (180, 8), (3000, 8)]),
        # 1080P 5s → 8s → 12s
        ("sora-2-pro", "1080p", 15, [(0, 5), (179, 5), (180, 8), (479, 8), (480, 12), (3000, 12)]),
    ],
)
def test_polls_slow_down_from_the_first_poll_on(
    model: str, resolution: str, duration: int, ladder: list[tuple[int, int]]
) -> None:
    first = 0.75 * RENDER_SECONDS[(model, resolution, duration)]
    for since_first, interval in ladder:
        now = T0 + timedelta(seconds=first + since_first)
        values, captures, releases = apply(Timing(), task(model, resolution, duration), "poll", now)
        assert values["due_at"] - now == timedelta(seconds=interval), since_first
        assert values["polls"] == 1 and values["lease_owner"] is None
        assert captures == releases == []


@given(a=st.floats(0, 5000), b=st.floats(0, 5000), resolution=st.sampled_from(["720p", "1080p"]))
@settings(max_examples=50)
def test_the_poll_interval_never_shrinks_as_time_passes(a: float, b: float, resolution: str) -> None:
    polling = get_polling_config(resolution)
    assert polling.interval(min(a, b)) <= polling.interval(max(a, b))


def test_every_delay_follows_the_time_scale() -> None:
    fast = Timing(scale=0.01)
    values, _, _ = apply(fast, task(state=SUBMITTING), "submitted", T0)
    assert (values["due_at"] - T0, values["deadline_at"] - T0) == (timedelta(seconds=0.45), timedelta(seconds=3))
    now = T0 + timedelta(seconds=(45 + 60) * 0.01)  # 60 scaled seconds after the first poll: the 5 s step
    values, _, _ = apply(fast, task(), "poll", now)
    assert values["due_at"] - now == timedelta(seconds=0.05)
    values, _, _ = apply(fast, task(attempts=2), "error", T0, error_kind=SERVER_ERROR, error="500")
    assert values["due_at"] - T0 == timedelta(seconds=0.04)


# --- retries ------------------------------------------------------------------------------------------
def test_backoff_is_2_4_8_seconds() -> None:
    assert [retry_backoff(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 8]


@pytest.mark.parametrize("kind", sorted(RETRYABLE_KINDS))
def test_a_retryable_error_is_retried_three_times_after_2_4_8_s_then_fails(kind: str) -> None:
    for attempt, wait in ((1, 2), (2, 4), (3, 8)):
        values, captures, releases = apply(Timing(), task(attempts=attempt), "error", T0, error_kind=kind, error="x")
        assert values["state"] == QUEUED and values["due_at"] - T0 == timedelta(seconds=wait)
        assert values["provider_task_id"] is None and values["deadline_at"] is None
        assert values["history"][-1]["retryAt"] == (T0 + timedelta(seconds=wait)).isoformat().replace("+00:00", "Z")
        assert captures == releases == []
    values, captures, releases = apply(Timing(), task(attempts=4), "error", T0, error_kind=kind, error="x")
    assert values["state"] == FAILED and values["finished_at"] == T0
    assert releases == ["studio:task-1"] and captures == []  # a final failure gives the credits back


@pytest.mark.parametrize("kind", [CONTENT_REJECTED, BAD_REQUEST, UNKNOWN_SUBMISSION])
def test_an_error_a_retry_cannot_help_fails_at_once(kind: str) -> None:
    values, _, releases = apply(Timing(), task(attempts=1), "error", T0, error_kind=kind, error="no")
    assert (values["state"], values["error_kind"], releases) == (FAILED, kind, ["studio:task-1"])


def test_retryable_kinds_are_timeouts_429_and_5xx() -> None:
    assert {TIMEOUT, RATE_LIMITED, SERVER_ERROR} == RETRYABLE_KINDS
    assert ProviderError(RATE_LIMITED, "429").retryable and not ProviderError(CONTENT_REJECTED, "nsfw").retryable


def test_a_success_captures_the_tasks_price() -> None:
    values, captures, releases = apply(Timing(), task(), "succeeded", T0, result_url="https://x/1.mp4")
    assert (values["state"], values["result_url"], values["polls"]) == (SUCCEEDED, "https://x/1.mp4", 1)
    assert captures == [("studio:task-1", 15)] and releases == []


# --- the provider step: timeouts, flaky polls, submissions ----------------------------------------------
async def test_a_render_past_its_deadline_times_out_and_is_cancelled() -> None:
    provider, clock = FakeProvider(), ManualClock(T0)
    running = task(deadline_at=T0 + timedelta(seconds=300))
    outcome = await calls(provider, clock).step(Claim(running))
    assert (outcome.kind, outcome.at, provider.cancelled) == ("poll", T0, [])
    clock.advance(300)  # the deadline itself: given up, and stopped at the provider
    outcome = await calls(provider, clock).step(Claim(running))
    assert (outcome.kind, outcome.error_kind, outcome.error) == ("error", TIMEOUT, "Timed out after 300 s")
    assert outcome.at == T0 + timedelta(seconds=300) and provider.cancelled == ["job-1"]


async def test_a_flaky_status_call_polls_again_and_a_failed_render_is_an_error() -> None:
    flaky = FakeProvider(status=ProviderError(SERVER_ERROR, "502"))
    assert (await calls(flaky).step(Claim(task()))).kind == "poll"
    refused = FakeProvider(status=ProviderError(BAD_REQUEST, "no such task"))
    outcome = await calls(refused).step(Claim(task()))
    assert (outcome.kind, outcome.error_kind) == ("error", BAD_REQUEST)
    failed = FakeProvider(status=Status("failed", error_kind=CONTENT_REJECTED, error="nsfw"))
    outcome = await calls(failed).step(Claim(task()))
    assert (outcome.kind, outcome.error_kind, outcome.error) == ("error", CONTENT_REJECTED, "nsfw")
    done = FakeProvider(status=Status("succeeded", result_url="https://x/1.mp4"))
    outcome = await calls(done).step(Claim(task()))
    assert (outcome.kind, outcome.result_url) == ("succeeded", "https://x/1.mp4")


async def test_a_resumed_submission_asks_the_provider_before_sending_again() -> None:
    provider = FakeProvider()
    provider.found = "job-already"
    outcome = await calls(provider).step(Claim(task(state=SUBMITTING), resumed=True))
    assert (outcome.kind, outcome.provider_task_id, provider.submitted) == ("submitted", "job-already", [])
    provider.found = None  # the provider never got it: send it, under the recorded request id
    outcome = await calls(provider).step(Claim(task(state=SUBMITTING), resumed=True))
    assert outcome.kind == "submitted" and [r.request_id for r in provider.submitted] == ["task-1.1.abc"]


async def test_a_lost_answer_from_a_provider_that_cannot_be_asked_is_never_sent_twice() -> None:
    provider = FakeProvider(finds=False)
    provider.submit_error = ProviderError(TIMEOUT, "read timeout", maybe_sent=True)
    outcome = await calls(provider).step(Claim(task(state=SUBMITTING)))
    assert (outcome.kind, outcome.error_kind) == ("error", UNKNOWN_SUBMISSION)
    provider.submit_error = ProviderError(TIMEOUT, "connect timeout", maybe_sent=False)  # never left: retry
    outcome = await calls(provider).step(Claim(task(state=SUBMITTING)))
    assert (outcome.kind, outcome.error_kind) == ("error", TIMEOUT)


def test_expected_render_times_and_submission_ids() -> None:
    assert expected_render_seconds("video", "sora-2-pro", "1080p", 15) == 480
    assert expected_render_seconds("video", "sora-2", None, None) == 60  # 720p 10 s when unsaid
    assert expected_render_seconds("image", "nano-banana", None, None) == IMAGE_RENDER_SECONDS
    ids = {submission_id("task-1", 1) for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("task-1.1.") for i in ids)  # never reused, even by retry-failed


# --- adaptive concurrency ------------------------------------------------------------------------------
def observe(e: Timing, b: StudioBatch, outcomes: str) -> list[int]:
    """Feed ``outcomes`` (F failed, S succeeded) to the batch; its limit after each."""
    limits = []
    for o in outcomes:
        if o == "F":
            apply(e, task(attempts=1), "error", T0, b, error_kind=SERVER_ERROR, error="500")
        else:
            apply(e, task(), "succeeded", T0, b)
        limits.append(b.concurrency_limit)
    return limits


def test_a_degradation_cuts_40_percent_to_the_nearest_slot_never_below_1() -> None:
    assert degraded_concurrency(1) == 1
    for n in range(2, 101):
        # of the limits it could become (1 … n-1), the one whose cut is closest to 40 %
        best = min(range(1, n), key=lambda m: abs((n - m) / n - 0.4))
        assert degraded_concurrency(n) == best, n


def test_past_30_percent_failures_a_pro_batch_goes_from_3_to_2_slots_then_back_after_5_successes() -> None:
    e, b = Timing(), batch(3)
    assert observe(e, b, "SSFFF") == [3, 3, 3, 3, 2]  # 3 of 5 failed
    assert b.degradations == 1 and b.recent_outcomes == []  # judged afresh after a change
    assert observe(e, b, "SSSS") == [2, 2, 2, 2]
    assert observe(e, b, "S") == [3]  # one step up after 5 successes in a row
    assert observe(e, b, "SSSSS") == [3] * 5  # never above the plan's


def test_exactly_30_percent_is_not_past_it() -> None:
    e, b = Timing(), batch(5)
    assert observe(e, b, "SSSSSSSFFF")[-1] == 5  # 3 of the last 10
    assert observe(e, b, "F")[-1] == 3  # 4 of the last 10: 5 → 3
    assert b.degradations == 1


def test_fewer_than_5_outcomes_are_not_judged_and_1_slot_is_the_floor() -> None:
    e, b = Timing(), batch(10)
    assert observe(e, b, "FFFF") == [10] * 4
    assert observe(e, b, "F") == [6]
    assert observe(e, b, "FFFFF FFFFF FFFFF".replace(" ", ""))[-1] == 1
    degradations = b.degradations
    observe(e, b, "FFFFFFFFFF")
    assert b.concurrency_limit == 1 and b.degradations == degradations  # nothing left to cut


@given(outcomes=st.text(alphabet="SF", max_size=60), limit=st.integers(1, 10))
@settings(max_examples=60)
def test_the_limit_stays_between_1_and_the_plan_and_moves_only_by_the_rules(outcomes: str, limit: int) -> None:
    """The rule as the README states it: past 30 % failures among the batch's recent outcomes
    (the last 10 since its limit last changed, once there are 5) the limit is cut; after 5
    successes in a row it goes one step back up, never above the plan's."""
    e, b = Timing(), batch(limit)
    expected, recent = limit, ""
    for after, o in zip(observe(e, b, outcomes), outcomes, strict=True):
        recent = (recent + o)[-10:]
        if len(recent) >= DEGRADE_MIN_OUTCOMES and recent.count("F") / len(recent) > 0.3 and expected > 1:
            expected, recent = degraded_concurrency(expected), ""
        elif recent.endswith("S" * DEGRADE_MIN_OUTCOMES) and expected < limit:
            expected, recent = expected + 1, ""
        assert after == expected and 1 <= after <= limit
