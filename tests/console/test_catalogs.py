"""The console's catalogs and templates, checked without a browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from batchops.console.i18n import LOCALES, negotiate, translations

CONSOLE = Path(__file__).parents[2] / "src" / "batchops" / "console"
METHODS = [("templates/**.html", "jinja2"), ("**.py", "python")]
OPTIONS = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "trim_blocks": "True", "lstrip_blocks": "True"}}


def extracted() -> set[str]:
    return {
        message if isinstance(message, str) else message[0]
        for _, _, message, _, _ in extract_from_dir(str(CONSOLE), METHODS, options_map=OPTIONS)
    }


def test_every_message_of_the_console_has_a_chinese_translation() -> None:
    with (CONSOLE / "locale" / "zh_CN" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f)
    translated = {m.id: m.string for m in catalog if m.id}
    missing = sorted(m for m in extracted() if not translated.get(m))
    assert not missing, f"run the extraction described in console/i18n.py: {missing}"
    placeholders = re.compile(r"%\((\w+)\)s")
    for msgid, msgstr in translated.items():
        assert set(placeholders.findall(msgid)) == set(placeholders.findall(str(msgstr))), msgid


@pytest.mark.parametrize("locale", LOCALES)
def test_catalogs_compile_at_runtime(locale: str) -> None:
    assert translations(locale).gettext("Sign out") == {"en": "Sign out", "zh_CN": "退出登录"}[locale]


@pytest.mark.parametrize(
    ("header", "locale"),
    [
        ("zh-CN,zh;q=0.9", "zh_CN"),
        ("zh-TW", "zh_CN"),
        ("en-GB,en;q=0.8", "en"),
        ("fr;q=1, zh;q=0.5, en;q=0.9", "en"),
        ("de, *;q=0.1", None),
        ("", None),
        ("zh;q=abc, en", "en"),
    ],
)
def test_accept_language_picks_the_best_language_the_console_has(header: str, locale: str | None) -> None:
    assert negotiate(header) == locale


def test_templates_hold_no_inline_script_or_event_handler() -> None:
    """The console's CSP allows scripts from its own files only: an inline one would not run."""
    for template in (CONSOLE / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template.name
        assert not re.search(r"\s(on[a-z]+|hx-on[:\w-]*)=", text), template.name
