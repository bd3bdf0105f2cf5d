"""Console passwords: argon2id hashes (argon2-cffi's defaults, RFC 9106's second choice)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 256  # argon2 takes any length; a cap keeps a hostile form from costing more than one hash

HASHER = PasswordHasher()
# Checked when the user is unknown or has no password, so that a sign-in takes as long
# whether or not the account exists.
_DUMMY = HASHER.hash("batchops-no-such-user")


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"Password must have at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"Password must have at most {MAX_LENGTH} characters"
    if "\x00" in password:
        return "Password must not contain NUL"
    return None


def verify_password(stored: str | None, password: str) -> bool:
    if len(password) > MAX_LENGTH:
        return False
    try:
        return HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
