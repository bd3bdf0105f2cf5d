"""Every metric a Prometheus alert or a Grafana panel in deploy/ reads is on /metrics of a
freshly started app, before any work: at zero, with the label values the queries select.
A missing series would be "no data" on a dashboard and an alert that cannot fire."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).parents[1] / "deploy"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
Selector = tuple[str, tuple[tuple[str, str], ...]]

# A fresh process: the registry of this test session has seen every other test's work.
FRESH_METRICS = """
import asyncio, sys
import httpx
from batchops.app import create_app
from batchops.settings import Settings

async def main() -> None:
    app = create_app(Settings(database_url=sys.argv[1], embedded_worker=False, log_level="WARNING"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        print((await client.get("/metrics")).text)

asyncio.run(main())
"""


def selectors(expr: str) -> set[Selector]:
    """The series a PromQL expression reads: metric names with their ``label="value"`` matchers."""
    found: set[Selector] = set()
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)

    def with_matchers(m: re.Match[str]) -> str:
        labels = tuple(sorted(re.findall(rf'({NAME})\s*=\s*"([^"]*)"', m.group(2))))
        found.add((m.group(1), labels))
        return " "

    expr = re.sub(rf"({NAME})\s*\{{([^}}]*)\}}", with_matchers, expr)
    for m in re.finditer(rf"(?<![\w.:])({NAME})\b(?!\s*\()", expr):
        if m.group(1) not in KEYWORDS:
            found.add((m.group(1), ()))
    return found


def deploy_expressions() -> dict[str, str]:
    """Every PromQL expression in deploy/: alert and recording rules, dashboard panel queries."""
    exprs: dict[str, str] = {}
    for path in (DEPLOY / "prometheus").glob("*.yml"):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                exprs[f"{path.name}: {rule.get('alert') or rule.get('record')}"] = rule["expr"]

    def panels(items: list[dict[str, Any]], source: str) -> None:
        for panel in items:
            for i, target in enumerate(panel.get("targets", [])):
                if "expr" in target:
                    exprs[f"{source}: {panel.get('title')} #{i}"] = target["expr"]
            panels(panel.get("panels", []), source)  # rows nest their panels

    for path in (DEPLOY / "grafana").glob("*.json"):
        panels(json.loads(path.read_text()).get("panels", []), path.name)
    return exprs


def test_the_expression_parser_finds_series_not_functions_or_labels() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, operation) (rate(x_seconds_bucket{kind="a", b=~"c"}[5m])))'
        " / clamp_min(sum(rate(y_total[15m])), 1e-9) > 0.1 and on(job) z"
    )
    assert selectors(expr) == {("x_seconds_bucket", (("kind", "a"),)), ("y_total", ()), ("z", ())}


def test_every_series_deploy_reads_exists_from_start_up(tmp_path: Path) -> None:
    exprs = deploy_expressions()
    assert len(exprs) >= 15, sorted(exprs)  # the alerts and the panels were found
    done = subprocess.run(
        [sys.executable, "-c", FRESH_METRICS, f"sqlite:///{tmp_path / 'fresh.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    samples = [s for family in text_string_to_metric_families(done.stdout) for s in family.samples]
    missing = []
    for where, expr in exprs.items():
        for name, labels in sorted(selectors(expr)):
            if not any(s.name == name and dict(labels).items() <= s.labels.items() for s in samples):
                missing.append(f"{where}: {name}{dict(labels) or ''}")
    assert not missing, "\n".join(missing)
