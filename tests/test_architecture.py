"""The shape DESIGN.md draws, checked: file sizes, who imports whom, and no private names
of the libraries we build on (a patch release of theirs must not be able to break us).

Each rule may list files that do not keep it yet (``*_YET``); a listed file that keeps the
rule fails the test too, so the lists only shrink."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "batchops"
MAX_LINES = 500
DOMAINS = ("scheduler", "billing", "dining", "studio")
# what each part may import of the others (core and settings: everyone; identity and notifications:
# every domain; a domain reaches another only through an interface the callee defines)
MAY_IMPORT = {
    "core": set(),
    "identity": set(),
    "notifications": {"identity"},
    "billing": {"identity", "notifications"},
    "scheduler": {"identity", "notifications", "billing"},
    "dining": {"identity", "notifications"},
    "studio": {"identity", "notifications", "billing"},
}
# Public API of namedtuples and SQLAlchemy rows that carries an underscore to stay out of the fields' way.
PUBLIC_UNDERSCORED = {"_asdict", "_mapping", "_fields", "_replace", "_make", "_t", "_tuple"}
PRIVATE_OF_DEPENDENCIES = re.compile(
    r"_connection\._conn|_execute_mutex|_start_transaction|\._transaction\b|_cached_bind_processor"
    r"|_cached_result_processor|AsyncAdapt_|\._has_events|_is_implicitly_boolean|_traverse_internals"
)

IMPORTS_YET: set[str] = set()
CORE_NAMES_YET: set[str] = set()
OVER_500_YET: set[str] = set()
PRIVATE_NAMES_YET: set[str] = set()


def sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def own_web_files() -> list[Path]:
    console = SRC / "console"
    return sorted(
        p
        for p in console.rglob("*")
        if p.suffix in {".html", ".css", ".js"} and "vendor" not in p.parts and p.is_file()
    )


def name(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def test_no_source_file_is_over_500_lines() -> None:
    over = {name(p) for p in [*sources(), *own_web_files()] if len(p.read_text().splitlines()) > MAX_LINES}
    assert over - OVER_500_YET == set(), "split these by operation or concern"
    assert OVER_500_YET - over == set(), "these keep the rule now: take them off OVER_500_YET"


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        for module in modules:
            bits = module.split(".")
            if bits[0] == "batchops" and len(bits) > 1:
                parts.add(bits[1])
    return parts


def test_parts_import_only_what_the_design_allows() -> None:
    wrong = []
    for part, allowed in MAY_IMPORT.items():
        for path in sorted((SRC / part).rglob("*.py")):
            others = imported_parts(path) - {part, "core", "settings"} - allowed
            if others:
                wrong.append(f"{name(path)} imports {sorted(others)}")
    assert set(wrong) - IMPORTS_YET == set(), "reach another part through an interface it defines, wired at start-up"
    assert IMPORTS_YET - set(wrong) == set(), "these keep the rule now: take them off IMPORTS_YET"


def code_words(path: Path) -> list[tuple[int, str]]:
    """Identifiers and string constants of a module, its docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
    return words


def test_core_knows_no_domain_by_name() -> None:
    domain = re.compile(r"(?i)(" + "|".join((*DOMAINS, "dining", "quick_batch", "allocation", "menu")) + r")")
    mentions = {
        name(p) for p in sorted((SRC / "core").rglob("*.py")) for _, word in code_words(p) if domain.search(word)
    }
    assert mentions - CORE_NAMES_YET == set(), "core serves every domain: name none of them"
    assert CORE_NAMES_YET - mentions == set(), "these keep the rule now: take them off CORE_NAMES_YET"


def defined_names() -> set[str]:
    names: set[str] = set()
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def test_no_private_name_of_a_dependency_is_used() -> None:
    ours = defined_names() | PUBLIC_UNDERSCORED
    using = set()
    for path in sources():
        text = path.read_text()
        if PRIVATE_OF_DEPENDENCIES.search(text):
            using.add(name(path))
        for node in ast.walk(ast.parse(text)):
            private_attribute = (
                isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            )
            if private_attribute and node.attr not in ours:  # type: ignore[union-attr]
                using.add(name(path))
            imported = isinstance(node, ast.ImportFrom) and not (node.module or "batchops").startswith("batchops")
            if imported and any(a.name.startswith("_") for a in node.names):  # type: ignore[union-attr]
                using.add(name(path))
    assert using - PRIVATE_NAMES_YET == set(), "use the library's public API"
    assert PRIVATE_NAMES_YET - using == set(), "these keep the rule now: take them off PRIVATE_NAMES_YET"
