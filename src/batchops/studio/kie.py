"""The KIE provider: ``POST /api/v1/jobs/createTask`` and ``GET /api/v1/jobs/recordInfo``
over httpx."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import urlencode

import httpx

from batchops.studio.config import IMAGE, KIE_IMAGE_MODELS, get_video_model_info
from batchops.studio.metrics import PROVIDER_CALLS
from batchops.studio.providers import (
    BAD_REQUEST,
    CONTENT_REJECTED,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    ProviderError,
    Status,
    SubmitRequest,
    callback_signature,
)


class KieProvider:
    """The KIE API: ``POST /api/v1/jobs/createTask`` and ``GET /api/v1/jobs/recordInfo``.

    KIE cannot be asked by a client request id (recordInfo takes only its own taskId), so
    ``find`` cannot answer and a submission whose answer a crash lost is never sent again.
    Instead, with ``callback_url`` set, every createTask carries ``callBackUrl`` with our
    request id (signed): KIE posts the task there when it ends, which tells us its taskId
    (``ProviderCallbacks.provider_callback``, studio/callbacks.py). Without it such a task fails as
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
