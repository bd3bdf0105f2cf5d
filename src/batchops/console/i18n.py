"""The console's two languages: gettext catalogs (``locale/<lang>/LC_MESSAGES/messages.po``)
compiled in memory on first use (no build step), chosen by a cookie the language switch
sets, else by the browser's Accept-Language.

A new message is written ``{{ _("…") }}`` in a template (``gettext_for(request)`` in
Python), then both catalogs are brought up to date and the Chinese one translated::

    cd src/batchops/console
    pybabel extract -F babel.cfg -o /tmp/console.pot --no-location --omit-header .
    pybabel update -i /tmp/console.pot -d locale --no-location --omit-header

(tests/console/test_catalogs.py fails while a message has no Chinese translation.)"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from starlette.requests import Request

LOCALES = ("en", "zh_CN")
DEFAULT_LOCALE = "en"
LANG_COOKIE = "batchops_lang"
LOCALE_DIR = Path(__file__).parent / "locale"
# "Language names in their own language", so a reader of either finds their own.
LANGUAGE_NAMES = {"en": "English", "zh_CN": "中文"}
HTML_LANG = {"en": "en", "zh_CN": "zh-CN"}

_RANGE = re.compile(r"^\s*([A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*$")


@lru_cache(maxsize=len(LOCALES))
def translations(locale: str) -> Translations:
    """The compiled catalog of ``locale`` (read once per process)."""
    with (LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f, locale=locale)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer)


def negotiate(accept_language: str | None) -> str | None:
    """The best of ``LOCALES`` for an Accept-Language header (``zh``, ``zh-TW``, ``zh-Hans``
    read as Chinese; ``en-GB`` as English), or None."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")):
        match = _RANGE.match(part)
        if not match:
            continue
        try:
            quality = float(match.group(2)) if match.group(2) else 1.0
        except ValueError:
            continue
        if quality > 0:
            ranked.append((-quality, position, match.group(1).lower()))
    for _, _, tag in sorted(ranked):
        primary = tag.replace("_", "-").split("-")[0]
        if primary == "zh":
            return "zh_CN"
        if primary == "en":
            return "en"
    return None


def request_locale(request: Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LOCALES:
        return chosen
    return negotiate(request.headers.get("accept-language")) or DEFAULT_LOCALE
