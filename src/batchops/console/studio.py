"""Video batches for creators (seed 003): my batches with progress and credits, and a new
batch from pasted prompts (one a line) or the CLI's CSV, with the model, resolution and
duration chosen for the batch or per row.

As the creator types, the page asks for a quote (``studio.reads.quote``: the checks of a
submission, made without holding anything) and shows the cost, the balance and the plan's
limits, sending nothing the server would refuse. Sending is the API's ``batch-generate``:
the same service, per-minute limit and worker wake-up; a refusal for want of credits
says how many are missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response

from batchops.billing.ledger import CREDITS, InsufficientBalance
from batchops.billing.service import BillingService
from batchops.console.imports import csv_text
from batchops.console.web import BASE, PagingParams, SignedIn, gettext_for, is_htmx, render, runtime
from batchops.core.errors import BadRequestError, ForbiddenError
from batchops.identity.models import User
from batchops.studio.config import MODELS, get_batch_config
from batchops.studio.reads import Quote, quote
from batchops.studio.rows import EXAMPLE_CSV, ParsedRows, parse_rows
from batchops.studio.schemas import BatchGenerateIn
from batchops.studio.service import StudioService

router = APIRouter()
MAX_TEXT = 1024 * 1024
# The batch's choices; the request model and the price list judge them, as for the API.
Model = Annotated[str, Form(min_length=1, max_length=64)]
Resolution = Annotated[str, Form(max_length=16)]
Duration = Annotated[int, Form(ge=1, le=60)]


def studio_of(request: Request) -> StudioService:
    service = runtime(request).services.get(StudioService)
    return service


@dataclass
class Draft:
    """A batch being written: its rows, the request they make, and what is wrong with it."""

    parsed: ParsedRows
    body: BatchGenerateIn | None = None
    problems: list[tuple[int | None, str]] = field(default_factory=list)  # (line, why)
    row_problems: dict[int, str] = field(default_factory=dict)  # row index → why


async def read_draft(prompts: str, rows_file: UploadFile | None, model: str, resolution: str, duration: int) -> Draft:
    draft = Draft(parse_rows(await csv_text(prompts, rows_file)))
    draft.problems = [(line, why) for line, why in draft.parsed.problems]
    if not draft.parsed.rows:
        return draft
    try:
        draft.body = BatchGenerateIn.model_validate(
            {
                "rows": draft.parsed.rows,
                "generationType": "video",
                "defaultModel": model,
                "defaultResolution": resolution,
                "defaultDuration": duration,
            }
        )
    except ValidationError as exc:
        for error in exc.errors():
            where = error.get("loc", ())
            if len(where) >= 2 and where[0] == "rows" and isinstance(where[1], int):
                field_name = ".".join(str(p) for p in where[2:])
                draft.row_problems.setdefault(where[1], f"{field_name}: {error.get('msg', '')}".strip(": "))
            else:
                draft.problems.append((None, f"{'.'.join(str(p) for p in where)}: {error.get('msg', '')}"))
    return draft


async def credits_available(request: Request, user: User) -> tuple[int, int, int]:
    """(balance, held, available) of the user's CREDITS."""
    billing = runtime(request).services.get(BillingService)
    balance, _ = await billing.balance(user.id, CREDITS)
    return balance.balance, balance.held, balance.available


async def quote_of(request: Request, user: User, draft: Draft) -> tuple[Quote, tuple[int, int, int]]:
    credits = await credits_available(request, user)
    if draft.body is None:
        plan = get_batch_config(user.plan)
        return Quote(plan, len(draft.parsed.rows), [], draft.row_problems, credits[2]), credits
    found = quote(user, draft.body, credits[2])
    return found, credits


def quote_context(draft: Draft, found: Quote, credits: tuple[int, int, int]) -> dict[str, Any]:
    problems = list(draft.problems) + [
        (draft.parsed.lines[i] if i < len(draft.parsed.lines) else None, why)
        for i, why in sorted({**found.problems, **draft.row_problems}.items())
    ]
    rows = list(zip(draft.parsed.lines, draft.body.rows, strict=False)) if draft.body else []
    balance, held, available = credits
    return {
        "q": found,
        "rows": rows,
        "body": draft.body,
        "problems": problems,
        "balance": balance,
        "held": held,
        "available": available,
    }


@router.get("/studio")
async def batches(request: Request, user: SignedIn, paging: PagingParams) -> Response:
    items, total = await studio_of(request).list(
        user, user_id=user.id, status=None, offset=paging.offset, limit=paging.size
    )
    return render(request, "studio_batches.html", batches=items, total=total, paging=paging, pages=paging.pages(total))


@router.get("/studio/new")
async def new_batch(request: Request, user: SignedIn) -> Response:
    draft = Draft(ParsedRows())
    found, credits = await quote_of(request, user, draft)
    return render(request, "studio_new.html", models=MODELS, **quote_context(draft, found, credits))


@router.get("/studio/example.csv")
async def example_csv(_user: SignedIn) -> Response:
    return Response(
        EXAMPLE_CSV,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="studio-rows.csv"'},
    )


Prompts = Annotated[str, Form(max_length=MAX_TEXT)]
RowsFile = Annotated[UploadFile | None, File()]


async def draft_form(
    prompts: Prompts = "",
    rows_file: RowsFile = None,
    model: Model = "sora-2",
    resolution: Resolution = "720p",
    duration: Duration = 10,
) -> Draft:
    """The studio form's fields, read as a draft (the quote and the submit post the same form)."""
    return await read_draft(prompts, rows_file, model, resolution, duration)


DraftForm = Annotated[Draft, Depends(draft_form)]


@router.post("/studio/quote")
async def quote_view(request: Request, user: SignedIn, draft: DraftForm) -> Response:
    found, credits = await quote_of(request, user, draft)
    return render(request, "_studio_quote.html", **quote_context(draft, found, credits))


@router.post("/studio/batches")
async def submit(request: Request, user: SignedIn, draft: DraftForm) -> Response:
    rt = runtime(request)
    _ = gettext_for(request)
    if draft.body is None or draft.problems or draft.row_problems:
        lines = draft.parsed.lines
        details = [
            {"field": _("line %(n)s") % {"n": line} if line else "rows", "message": why} for line, why in draft.problems
        ]
        details += [
            {"field": _("line %(n)s") % {"n": lines[i]} if i < len(lines) else "rows", "message": why}
            for i, why in sorted(draft.row_problems.items())
        ]
        raise BadRequestError(_("Nothing was sent: the rows need fixing first."), details=details)
    await rt.limiter.hit(f"studio.batch-generate:{user.id}")  # the API's limit, on the same key
    try:
        accepted = await studio_of(request).submit(user, draft.body)
    except InsufficientBalance as exc:
        message = _(
            "Not sent: the batch needs %(needed)s credits and %(available)s are available, %(shortfall)s short. "
            "Nothing was held."
        ) % {"needed": exc.needed, "available": exc.available, "shortfall": exc.shortfall}
        raise ForbiddenError(message) from exc
    rt.worker.wake()
    target = f"{BASE}/studio/batches/{accepted.batch_id}"
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)
