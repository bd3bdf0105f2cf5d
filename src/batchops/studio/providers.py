"""What the studio asks of a video provider, whichever it is: ``simulated`` (offline,
:mod:`batchops.studio.simulated`) or ``kie`` (the KIE API, :mod:`batchops.studio.kie`).

Every provider answers four calls: submit (with our own request id), find (by
that request id: resuming after a crash asks before submitting again), status
and cancel. Errors are :class:`ProviderError` with a kind that decides whether a
retry can help.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Protocol

from batchops.studio.config import IMAGE, IMAGE_RENDER_SECONDS, get_video_model_info

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


def expected_render_seconds(generation_type: str, model: str, resolution: str | None, duration: int | None) -> float:
    if generation_type == IMAGE:
        return IMAGE_RENDER_SECONDS
    return get_video_model_info(model, resolution or "720p", duration or 10).expected_render_seconds


def callback_signature(key: str, request_id: str) -> str:
    """What proves a callback URL is one we handed out (KIE echoes it back verbatim)."""
    return hmac.new(key.encode(), f"kie-callback:{request_id}".encode(), hashlib.sha256).hexdigest()[:32]
