"""``python -m bench [name ...] [--db sqlite|postgresql]`` (what ``make bench`` runs).

Runs every bench module present (or only the ones named), one after the other.
A bench module is ``bench/<name>.py`` with ``main(argv)``; it is given
``--db sqlite|postgresql`` (``scheduler_phase3`` predates that and takes ``--sqlite``).
A module that cannot be imported (a domain not merged yet) is skipped when not named.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable

from rich.console import Console

KNOWN = ("scheduler", "scheduler_phase3", "billing", "dining", "studio")
ARGS: dict[str, Callable[[str], list[str]]] = {
    "scheduler_phase3": lambda db: ["--sqlite"] if db == "sqlite" else [],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"bench modules to run (default: every one of {', '.join(KNOWN)})")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args, extra = parser.parse_known_args(argv)  # the rest goes to each bench (e.g. --reps 10)
    console = Console()
    named = bool(args.names)
    failed: list[str] = []
    for name in args.names or KNOWN:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ImportError as exc:
            if named:
                console.print(f"[red]bench {name}: cannot import: {exc}[/red]")
                failed.append(name)
            else:
                console.print(f"[dim]bench {name}: not present ({exc}), skipped[/dim]")
            continue
        run = getattr(module, "main", None)
        if not callable(run):
            console.print(f"[red]bench {name}: no main()[/red]")
            failed.append(name)
            continue
        bench_args = ARGS.get(name, lambda db: ["--db", db])(args.db) + extra
        console.rule(f"bench {name} {' '.join(bench_args)}")
        started = time.monotonic()
        try:
            run(bench_args)
        except Exception:
            console.print(f"[red]bench {name} failed:[/red]\n{traceback.format_exc()}")
            failed.append(name)
            continue
        console.print(f"[dim]bench {name}: {time.monotonic() - started:.0f} s[/dim]")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
