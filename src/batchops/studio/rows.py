"""The rows of a batch as people write them: the CLI's CSV (a header line naming the
columns, ``prompt`` among them) or, without such a header, one prompt a line. Each row
becomes a ``batch-generate`` row (``{"prompt", "model"?, "resolution"?, "duration"?,
"imageUrl"?}``); what cannot become one is reported with its line number."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

# Header names (any case, spaces around ignored) and the request field each fills.
COLUMNS = {
    "prompt": "prompt",
    "model": "model",
    "resolution": "resolution",
    "duration": "duration",
    "imageurl": "imageUrl",
    "image_url": "imageUrl",
    "image": "imageUrl",
}
EXAMPLE_CSV = (
    "prompt,model,resolution,duration,imageUrl\n"
    "A red fox running through fresh snow at dawn,,,,\n"
    "A neon-lit city street in the rain at night,,720p,15,\n"
    "Waves breaking on a rocky shore in slow motion,sora-2,720p,10,\n"
    "A paper boat drifting down a gutter after a storm,sora-2-pro,1080p,10,\n"
)


@dataclass
class ParsedRows:
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the line each row came from (1-based)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, why)


def header_cells(line: str) -> list[str]:
    return [c.strip().lower() for c in next(csv.reader([line]), [])]


def parse_rows(text: str) -> ParsedRows:
    parsed = ParsedRows()
    text = text.removeprefix("\ufeff")
    at, first = next(((n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()), (1, ""))
    cells = header_cells(first)
    unknown = [c for c in cells if c not in COLUMNS]
    if "prompt" in cells and unknown:  # a header with a misspelt column: not a prompt to render
        names = ", ".join(sorted(set(COLUMNS.values())))
        parsed.problems.append((at, f"the first line must name the columns, prompt among them ({names}): {unknown}"))
        return parsed
    if "prompt" not in cells:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                parsed.rows.append({"prompt": line.strip()})
                parsed.lines.append(number)
        return parsed
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        _read_records(reader, parsed)
    except csv.Error as exc:  # a cell past the csv module's size limit, say: the rest is not read
        parsed.problems.append((reader.line_num, f"unreadable CSV: {exc}"))
    return parsed


def _read_records(reader: Any, parsed: ParsedRows) -> None:
    header: list[str] | None = None
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [COLUMNS[c.strip().lower()] for c in cells]
            continue
        at = reader.line_num
        values = {name: cell.strip() for name, cell in zip(header, cells, strict=False) if cell.strip()}
        if not values.get("prompt"):
            parsed.problems.append((at, "no prompt"))
            continue
        row: dict[str, Any] = {k: v for k, v in values.items() if k != "duration"}
        if "duration" in values:
            seconds = values["duration"].lower().removesuffix("s").strip()
            if not seconds.isdigit():
                parsed.problems.append((at, f"duration {values['duration']!r} is not a number of seconds (10 or 15)"))
                continue
            row["duration"] = int(seconds)
        parsed.rows.append(row)
        parsed.lines.append(at)
