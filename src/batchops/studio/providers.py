"""Video providers: ``simulated`` (offline, state in the database so every worker
process shares it) and ``kie`` (the KIE API over httpx).

Every provider answers four calls: submit (with our own request id), find (by
that request id: resuming after a crash asks before submitting again), status
and cancel. Errors are :class:`ProviderError` with a kind that decides whether a
retry can help.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
from sqlalchemy import select, update

from batchops.core.clock import Clock, system_clock
from batchops.core.db import Database
from batchops.studio.config import IMAGE, IMAGE_RENDER_SECONDS, KIE_IMAGE_MODELS, get_video_model_info
from batchops.studio.metrics import PROVIDER_CALLS
from batchops.studio.models import SimJob

# error kinds
TIMEOUT, RATE_LIMITED, SERVER_ERROR, CONTENT_REJECTED, BAD_REQUEST, CANCELLED, UNKNOWN_SUBMISSION = (
    "timeout",
    "rate_limited",
    "server_error",
    "content_rejected",
    "bad_request",
    "cancelled",
    "unknown_submission",  # a crash lost the provider's answer and the provider cannot be asked
)
ERROR_KINDS = (TIMEOUT, RATE_LIMITED, SERVER_ERROR, CONTENT_REJECTED, BAD_REQUEST, CANCELLED, UNKNOWN_SUBMISSION)
RETRYABLE_KINDS = frozenset({TIMEOUT, RATE_LIMITED, SERVER_ERROR})


class ProviderError(Exception):
    """``maybe_sent``: the request may have reached the provider (no answer, or half of
    one): a submission that failed so must not simply be sent again."""

    def __init__(self, kind: str, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.maybe_sent = maybe_sent

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


def submission_id(task_id: str, attempt: int) -> str:
    """Our id of one submission of a task, recorded with the intent before the provider
    call. Random, so never used before: retry-failed starts the attempts at 1 again, and
    the provider's ``find`` or KIE's callback for an earlier submission's id would
    otherwise hand a retried task that submission's (failed) render."""
    return f"{task_id}.{attempt}.{secrets.token_hex(6)}"


@dataclass(frozen=True)
class SubmitRequest:
    request_id: str
    task_id: str
    user_id: str
    generation_type: str
    model: str
    resolution: str | None
    duration: int | None
    prompt: str
    image_url: str | None
    attempt: int = 1  # of this run of the task (retry-failed starts again at 1)


@dataclass(frozen=True)
class Status:
    state: str  # running | succeeded | failed
    result_url: str | None = None
    error_kind: str | None = None
    error: str | None = None


class Provider(Protocol):
    name: str
    # find() is authoritative: None means the provider never received that request id
    finds_by_request_id: bool
    # the provider calls us back with our request id (so an unanswered submission can wait for it)
    calls_back: bool

    async def submit(self, req: SubmitRequest) -> str: ...

    async def find(self, request_id: str) -> str | None: ...

    async def status(self, provider_task_id: str) -> Status: ...

    async def cancel(self, provider_task_id: str) -> None: ...

    async def close(self) -> None: ...


def _fraction(key: str) -> float:
    """A stable number in [0, 1) for a key (deterministic failures and jitter)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000


def expected_render_seconds(generation_type: str, model: str, resolution: str | None, duration: int | None) -> float:
    if generation_type == IMAGE:
        return IMAGE_RENDER_SECONDS
    return get_video_model_info(model, resolution or "720p", duration or 10).expected_render_seconds


class SimulatedProvider:
    """Offline provider. Render time = typical time × (0.9–1.1) × ``time_scale``, on
    ``clock`` (the runtime's: ``make run`` renders at a tenth of real time, a test may move
    a ManualClock instead of waiting).

    ``failure_rate`` of submissions fail with a retryable server error at the end
    of the render. Prompts may force an outcome: ``[reject]`` (content rejected),
    ``[429]`` (rate limited at submit), ``[5xx]`` (server error at the end),
    ``[slow]`` (renders a thousand times longer than usual: far past the timeout, so a
    late poll on a loaded machine still finds it running, never finished).
    """

    name = "simulated"
    finds_by_request_id = True
    calls_back = False

    def __init__(
        self, db: Database, *, clock: Clock = system_clock, time_scale: float = 1.0, failure_rate: float = 0.0
    ) -> None:
        self.db = db
        self.clock = clock
        self.time_scale = time_scale
        self.failure_rate = failure_rate

    async def submit(self, req: SubmitRequest) -> str:
        if "[429]" in req.prompt:
            PROVIDER_CALLS.labels(provider=self.name, call="submit", outcome="error").inc()
            raise ProviderError(RATE_LIMITED, "429 Too Many Requests")
        base = expected_render_seconds(req.generation_type, req.model, req.resolution, req.duration)
        # Draws keyed on the prompt and the attempt number (not on generated ids), so a given
        # batch renders and fails the same way on every run: reproducible tests and benches.
        draw = f"{req.prompt}:{req.attempt}"
        render = base * (0.9 + 0.2 * _fraction("render:" + draw)) * self.time_scale
        if "[slow]" in req.prompt:
            render *= 1000
        if "[reject]" in req.prompt:
            outcome = CONTENT_REJECTED
        elif "[5xx]" in req.prompt or _fraction("fail:" + draw) < self.failure_rate:
            outcome = SERVER_ERROR
        else:
            outcome = "succeeded"
        now = self.clock()
        job_id = "sim-" + hashlib.sha256(f"{req.request_id}:{now.isoformat()}".encode()).hexdigest()[:24]
        async with self.db.transaction() as session:
            session.add(
                SimJob(
                    id=job_id,
                    request_id=req.request_id,
                    task_ref=req.task_id,
                    user_ref=req.user_id,
                    submitted_at=now,
                    ready_at=now + timedelta(seconds=render),
                    ended_at=None,
                    outcome=outcome,
                    polls=0,
                )
            )
        PROVIDER_CALLS.labels(provider=self.name, call="submit", outcome="ok").inc()
        return job_id

    async def find(self, request_id: str) -> str | None:
        PROVIDER_CALLS.labels(provider=self.name, call="find", outcome="ok").inc()
        async with self.db.transaction() as session:
            found = await session.scalar(select(SimJob.id).where(SimJob.request_id == request_id).limit(1))
        return found

    async def status(self, provider_task_id: str) -> Status:
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    update(SimJob)
                    .where(SimJob.id == provider_task_id)
                    .values(polls=SimJob.polls + 1)
                    .returning(SimJob.ready_at, SimJob.ended_at, SimJob.outcome)
                )
            ).first()
        # Judged when the answer is given, as a real provider would: a "now" taken before
        # waiting for SQLite's write lock could call a finished render "running" just as the
        # engine, reading its clock after the answer, finds the task past its deadline.
        now = self.clock()
        PROVIDER_CALLS.labels(provider=self.name, call="status", outcome="ok").inc()
        if row is None:
            return Status("failed", error_kind=SERVER_ERROR, error="Unknown task")
        ready_at, ended_at, outcome = row
        if ended_at is not None:
            return Status("failed", error_kind=CANCELLED, error="Cancelled")
        if now < ready_at:
            return Status("running")
        if outcome == "succeeded":
            return Status("succeeded", result_url=f"https://sim.batchops.local/videos/{provider_task_id}.mp4")
        message = "Content rejected by the safety filter" if outcome == CONTENT_REJECTED else "500 Render failed"
        return Status("failed", error_kind=outcome, error=message)

    async def cancel(self, provider_task_id: str) -> None:
        now = self.clock()
        async with self.db.transaction() as session:
            await session.execute(
                update(SimJob)
                .where(SimJob.id == provider_task_id, SimJob.ended_at.is_(None), SimJob.ready_at > now)
                .values(ended_at=now)
            )
        PROVIDER_CALLS.labels(provider=self.name, call="cancel", outcome="ok").inc()

    async def close(self) -> None:
        return None


class KieProvider:
    """The KIE API: ``POST /api/v1/jobs/createTask`` and ``GET /api/v1/jobs/recordInfo``.

    KIE cannot be asked by a client request id (recordInfo takes only its own taskId), so
    ``find`` cannot answer and a submission whose answer a crash lost is never sent again.
    Instead, with ``callback_url`` set, every createTask carries ``callBackUrl`` with our
    request id (signed): KIE posts the task there when it ends, which tells us its taskId
    (``StudioService.provider_callback``). Without it such a task fails as
    ``unknown_submission`` with its credits returned: a duplicate render is never risked.
    """

    name = "kie"
    finds_by_request_id = False

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_seconds: float = 30.0,
        callback_url: str | None = None,
        callback_key: str = "",
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_seconds)
        self.callback_url = callback_url
        self.callback_key = callback_key
        self.calls_back = callback_url is not None

    async def _call(self, call: str, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            PROVIDER_CALLS.labels(provider=self.name, call=call, outcome="error").inc()
            # not connected (or no connection free): KIE cannot have seen the request
            maybe_sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            if isinstance(exc, httpx.TimeoutException):
                raise ProviderError(TIMEOUT, f"KIE {call} timed out", maybe_sent=maybe_sent) from exc
            raise ProviderError(SERVER_ERROR, f"KIE {call} failed: {exc}", maybe_sent=maybe_sent) from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = int(body.get("code", response.status_code)) if isinstance(body, dict) else response.status_code
        status = response.status_code if response.status_code != 200 else code
        if status != 200:
            PROVIDER_CALLS.labels(provider=self.name, call=call, outcome="error").inc()
            message = f"KIE {call}: {status} {body.get('msg', '') if isinstance(body, dict) else ''}".strip()
            raise ProviderError(_kind_of(status, message), message)
        PROVIDER_CALLS.labels(provider=self.name, call=call, outcome="ok").inc()
        return body.get("data") or {}

    async def submit(self, req: SubmitRequest) -> str:
        if req.generation_type == IMAGE:
            model = KIE_IMAGE_MODELS.get(req.model, req.model)
            payload: dict[str, Any] = {"model": model, "input": {"prompt": req.prompt, "output_format": "png"}}
            if req.image_url:
                payload["input"]["image_urls"] = [req.image_url]
        else:
            info = get_video_model_info(req.model, req.resolution or "720p", req.duration or 10)
            inputs: dict[str, Any] = {
                "prompt": req.prompt,
                "aspect_ratio": "landscape",
                "n_frames": str(info.duration),
                "remove_watermark": True,
            }
            if req.model == "sora-2-pro":
                inputs["size"] = info.quality
            if req.image_url:
                inputs["image_urls"] = [req.image_url]
            payload = {"model": info.kie_image_model if req.image_url else info.kie_model, "input": inputs}
        if self.callback_url:
            query = urlencode(
                {"requestId": req.request_id, "sig": callback_signature(self.callback_key, req.request_id)}
            )
            payload["callBackUrl"] = f"{self.callback_url}?{query}"
        data = await self._call("submit", "POST", "/api/v1/jobs/createTask", json=payload)
        task_id = data.get("taskId")
        if not task_id:
            raise ProviderError(SERVER_ERROR, "KIE createTask returned no taskId")
        return str(task_id)

    async def find(self, request_id: str) -> str | None:
        return None

    async def status(self, provider_task_id: str) -> Status:
        data = await self._call("status", "GET", "/api/v1/jobs/recordInfo", params={"taskId": provider_task_id})
        state = data.get("state")
        if state == "success":
            urls: list[str] = []
            with contextlib.suppress(ValueError, AttributeError):
                urls = json.loads(data.get("resultJson") or "{}").get("resultUrls") or []
            return Status("succeeded", result_url=urls[0] if urls else None)
        if state == "fail":
            message = str(data.get("failMsg") or "KIE task failed")
            code = str(data.get("failCode") or "")
            return Status("failed", error_kind=_kind_of(int(code) if code.isdigit() else 0, message), error=message)
        return Status("running")

    async def cancel(self, provider_task_id: str) -> None:
        return None  # KIE offers no cancel; the engine simply stops polling

    async def close(self) -> None:
        await self.client.aclose()


def callback_signature(key: str, request_id: str) -> str:
    """What proves a callback URL is one we handed out (KIE echoes it back verbatim)."""
    return hmac.new(key.encode(), f"kie-callback:{request_id}".encode(), hashlib.sha256).hexdigest()[:32]


def _kind_of(status: int, message: str) -> str:
    text = message.lower()
    if status == 429:
        return RATE_LIMITED
    if status >= 500:
        return SERVER_ERROR
    if "timeout" in text or "timed out" in text:
        return TIMEOUT
    if any(w in text for w in ("content", "policy", "safety", "violat", "sensitive")):
        return CONTENT_REJECTED
    return BAD_REQUEST
