"""``batchops studio submit rows.csv --model … --watch``: submit a batch over HTTP and
follow it with a progress bar."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchops.cli.errors import CliError, api_error
from batchops.core.auth import create_token
from batchops.settings import get_settings
from batchops.studio.rows import parse_rows

app = typer.Typer(help="Batch AI video / image generation (seed 003).", no_args_is_help=True)
console = Console()

DEFAULT_URL = "http://127.0.0.1:8000"
SUBMIT_HELP = """Submit the rows of CSV_FILE as one batch; --watch follows it to the end.

\b
CSV_FILE is one prompt a line, or a CSV whose header line names its columns
(any order, any case):
  prompt      required: what to generate
  model       sora-2 or sora-2-pro (video); nano-banana or gpt-4o-image
  resolution  720p or 1080p (video)
  duration    10 or 15 seconds (video; 10s reads too)
  imageUrl    an image to start from
Only prompt is required: a column left out or a cell left empty takes the
default, --model / --resolution / --duration, else sora-2 (nano-banana for
images), 720p, 10 s. Example: examples/studio-rows.csv.
Each row is priced (sora-2 720p 10 s: 15 credits) and the batch's total is
held from the caller's CREDITS when it is accepted (403 without enough)."""


def read_rows(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of a studio CSV (see ``SUBMIT_HELP``: ``studio.rows``, as the console reads
    them) and the line each came from; the first problem is the command's error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    parsed = parse_rows(text)
    if parsed.problems:
        line, why = parsed.problems[0]
        raise CliError(f"{path}, line {line}: {why}")
    return parsed.rows, parsed.lines


def _token(token: str | None, user: str | None) -> str:
    if token is None and user is not None:
        token = create_token(user, get_settings().jwt_secret)
    if token is None:
        raise CliError("no token", "give --token (or set BATCHOPS_TOKEN, e.g. to `batchops token <userId>`) or --user")
    return token


def _fail(response: httpx.Response, token: str, csv_file: Path | None = None, lines: list[int] | None = None) -> None:
    error = api_error(response, token)
    row = re.search(r"rows[.\[](\d+)", error.message)
    if csv_file is not None and lines and row and int(row.group(1)) < len(lines):
        error.hint = f"rows[{row.group(1)}] is line {lines[int(row.group(1))]} of {csv_file}" + (
            f"; {error.hint}" if error.hint else ""
        )
    raise error


@app.command(help=SUBMIT_HELP)
def submit(
    csv_file: Annotated[Path, typer.Argument(dir_okay=False, help="the rows, one per line (format below)")],
    model: Annotated[str | None, typer.Option(help="default model (sora-2, sora-2-pro, nano-banana, ...)")] = None,
    resolution: Annotated[str | None, typer.Option(help="default resolution: 720p or 1080p")] = None,
    duration: Annotated[int | None, typer.Option(help="default duration in seconds: 10 or 15")] = None,
    generation_type: Annotated[str, typer.Option("--type", help="video or image")] = "video",
    url: Annotated[str, typer.Option(envvar="BATCHOPS_URL", help="batchops base URL")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(envvar="BATCHOPS_TOKEN", help="bearer token")] = None,
    user: Annotated[str | None, typer.Option(help="mint a token for this user id (needs the JWT secret)")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="follow the batch with a progress bar")] = False,
    interval: Annotated[float, typer.Option(help="seconds between progress polls")] = 1.0,
) -> None:
    rows, lines = read_rows(csv_file)
    if not rows:
        raise CliError(f"{csv_file}: no rows under the header")
    bearer = _token(token, user)
    body: dict[str, Any] = {"rows": rows, "generationType": generation_type}
    for key, value in (("defaultModel", model), ("defaultResolution", resolution), ("defaultDuration", duration)):
        if value is not None:
            body[key] = value
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {bearer}"}, timeout=30) as http:
        r = http.post("/api/v1/workflow/batch-generate", json=body)
        if r.status_code != 202:
            _fail(r, bearer, csv_file, lines)
        accepted = r.json()["data"]
        batch_id = accepted["batchId"]
        console.print(
            f"[green]accepted[/green] {batch_id}: {accepted['totalCount']} tasks, "
            f"{accepted['creditsHeld']} credits held (plan {accepted['plan']})"
        )
        if watch:
            follow(http, batch_id, accepted["totalCount"], interval, bearer)


def follow(http: httpx.Client, batch_id: str, total: int, interval: float, token: str) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(batch_id[:18], total=total, detail="")
        while True:
            r = http.get(f"/api/v1/workflow/batches/{batch_id}")
            if r.status_code != 200:
                _fail(r, token)
            view = r.json()["data"]
            c = view["counts"]
            done = c["succeeded"] + c["failed"] + c["cancelled"]
            detail = f"running {c['running']} · ok {c['succeeded']} · failed {c['failed']} · {view['status']}"
            progress.update(bar, completed=done, detail=detail)
            if view["status"] in ("completed", "cancelled"):
                break
            time.sleep(interval)
    table = Table(title=f"batch {batch_id}")
    for column in ("status", "succeeded", "failed", "cancelled", "spent", "returned"):
        table.add_column(column)
    table.add_row(
        view["status"],
        str(c["succeeded"]),
        str(c["failed"]),
        str(c["cancelled"]),
        str(view["credits"]["spent"]),
        str(view["credits"]["returned"]),
    )
    console.print(table)
    if view["failureAnalysis"]["failedCount"]:
        console.print(f"failures by kind: {view['failureAnalysis']['byKind']}")
