"""What every request string obeys, as regular expressions the OpenAPI schema publishes.

No string may hold a NUL character: PostgreSQL cannot store one (a 500 there, fine on
SQLite), so it is refused on every engine.
"""

from __future__ import annotations

NO_NUL = r"^[^\x00]*$"


def has_nul(value: str | bytes) -> bool:
    return "\x00" in value if isinstance(value, str) else b"\x00" in value
