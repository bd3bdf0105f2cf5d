"""What every request string obeys, as regular expressions the OpenAPI schema publishes.

No string may hold a NUL character: PostgreSQL cannot store one (a 500 there, fine on
SQLite), so it is refused on every engine. "Blank" is spelled out character by
character so that the server (``str.strip``) and a client validating against the
published pattern agree on every input; regex ``\\s`` differs between engines.
"""

from __future__ import annotations

# Exactly the characters ``str.isspace()`` is true for (and ``str.strip()`` removes).
WHITESPACE_CLASS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = rf"^[^\x00]*[^\x00{WHITESPACE_CLASS}][^\x00]*$"

# The message a client reads instead of the pattern it failed.
PATTERN_MESSAGES = {
    NO_NUL: "must not contain a NUL character (\\u0000)",
    NOT_BLANK: "must not be blank or contain a NUL character (\\u0000)",
}


def has_nul(value: str | bytes) -> bool:
    return "\x00" in value if isinstance(value, str) else b"\x00" in value
