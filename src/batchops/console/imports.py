"""Rows pasted or uploaded as CSV (a header line, then one row per line), turned into the
API's own request models so that the same validation applies; a row that fails it is
reported with its line number and never sent."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import UploadFile
from pydantic import BaseModel, ValidationError

from batchops.core.errors import BadRequestError

M = TypeVar("M", bound=BaseModel)
MAX_UPLOAD_BYTES = 1024 * 1024
MAX_ROWS = 5000


@dataclass
class ParsedRows(Generic[M]):
    models: list[tuple[int, M]] = field(default_factory=list)  # (line, model)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, why)


async def csv_text(pasted: str | None, upload: UploadFile | None) -> str:
    """The uploaded file's text if one was chosen, else what was pasted."""
    if upload is not None and upload.filename:
        raw = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(raw) > MAX_UPLOAD_BYTES:
            raise BadRequestError(f"CSV file larger than {MAX_UPLOAD_BYTES // 1024} KiB")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadRequestError("CSV file is not UTF-8 text") from None
    return pasted or ""


def parse_rows(text: str, model: type[M], columns: dict[str, str], integers: set[str]) -> ParsedRows[M]:
    """``columns`` maps each accepted header (lower case, ``_`` and ``-`` ignored) to the
    model's field alias; ``integers`` names the aliases whose cells are whole numbers."""
    if "\x00" in text:
        raise BadRequestError("CSV must not contain NUL characters")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise BadRequestError("CSV needs a header line and at least one row")
    if len(lines) > MAX_ROWS + 1:
        raise BadRequestError(f"At most {MAX_ROWS} rows at once")
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header = [_key(h) for h in next(reader)]
    unknown = [h for h in header if h not in columns]
    if unknown:
        raise BadRequestError(f"Unknown CSV columns: {', '.join(unknown)}; expected {', '.join(columns.values())}")
    parsed: ParsedRows[M] = ParsedRows()
    for line, cells in enumerate(reader, start=2):
        values: dict[str, Any] = {}
        for name, cell in zip(header, cells, strict=False):
            alias, cell = columns[name], cell.strip()
            if cell == "":
                continue
            values[alias] = int(cell) if alias in integers and cell.lstrip("-").isdigit() else cell
        try:
            parsed.models.append((line, model.model_validate(values)))
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors()[:3])
            parsed.problems.append((line, why))
    return parsed


def _key(header: str) -> str:
    return header.strip().lower().replace("_", "").replace("-", "")
