"""``batchops studio submit rows.csv --model … --watch``: submit a batch over HTTP and
follow it with a progress bar."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchops.core.auth import create_token
from batchops.settings import get_settings

app = typer.Typer(help="Batch AI video / image generation (seed 003).", no_args_is_help=True)
console = Console()

COLUMNS = {"prompt": "prompt", "model": "model", "resolution": "resolution", "duration": "duration"}
IMAGE_URL = ("imageUrl", "image_url", "imageURL")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """CSV with a header: ``prompt`` (required), ``model``, ``resolution``, ``duration``, ``imageUrl``."""
    rows: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        for line in csv.DictReader(f):
            prompt = (line.get("prompt") or "").strip()
            if not prompt:
                continue
            row: dict[str, Any] = {"prompt": prompt}
            for key in ("model", "resolution"):
                if (line.get(key) or "").strip():
                    row[key] = line[key].strip()
            if (line.get("duration") or "").strip():
                row["duration"] = int(line["duration"].strip().rstrip("s"))
            for key in IMAGE_URL:
                if (line.get(key) or "").strip():
                    row["imageUrl"] = line[key].strip()
            rows.append(row)
    return rows


def _headers(token: str | None, user: str | None) -> dict[str, str]:
    if token is None and user is not None:
        token = create_token(user, get_settings().jwt_secret)
    if token is None:
        raise typer.BadParameter("give --token (or BATCHOPS_TOKEN) or --user")
    return {"Authorization": f"Bearer {token}"}


def _fail(response: httpx.Response) -> None:
    try:
        body = response.json()
        message = f"{body.get('error')}: {body.get('message')}"
    except ValueError:
        message = response.text
    console.print(f"[red]{response.status_code}[/red] {message}")
    raise typer.Exit(1)


@app.command()
def submit(
    csv_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="rows: prompt,model,resolution,...")],
    model: Annotated[str | None, typer.Option(help="default model (sora-2, sora-2-pro, nano-banana, ...)")] = None,
    resolution: Annotated[str | None, typer.Option(help="default resolution: 720p or 1080p")] = None,
    duration: Annotated[int | None, typer.Option(help="default duration in seconds: 10 or 15")] = None,
    generation_type: Annotated[str, typer.Option("--type", help="video or image")] = "video",
    url: Annotated[str, typer.Option(envvar="BATCHOPS_URL", help="batchops base URL")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(envvar="BATCHOPS_TOKEN", help="bearer token")] = None,
    user: Annotated[str | None, typer.Option(help="mint a token for this user id (needs the JWT secret)")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="follow the batch with a progress bar")] = False,
    interval: Annotated[float, typer.Option(help="seconds between progress polls")] = 1.0,
) -> None:
    """Submit the rows of CSV_FILE as one batch."""
    rows = read_rows(csv_file)
    if not rows:
        console.print("[red]no rows with a prompt[/red]")
        raise typer.Exit(1)
    body: dict[str, Any] = {"rows": rows, "generationType": generation_type}
    for key, value in (("defaultModel", model), ("defaultResolution", resolution), ("defaultDuration", duration)):
        if value is not None:
            body[key] = value
    with httpx.Client(base_url=url, headers=_headers(token, user), timeout=30) as http:
        r = http.post("/api/v1/workflow/batch-generate", json=body)
        if r.status_code != 202:
            _fail(r)
        accepted = r.json()["data"]
        batch_id = accepted["batchId"]
        console.print(
            f"[green]accepted[/green] {batch_id}: {accepted['totalCount']} tasks, "
            f"{accepted['creditsHeld']} credits held (plan {accepted['plan']})"
        )
        if watch:
            follow(http, batch_id, accepted["totalCount"], interval)


def follow(http: httpx.Client, batch_id: str, total: int, interval: float) -> None:
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
                _fail(r)
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
