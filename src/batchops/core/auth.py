"""Bearer JWT (HS256) and the service token of /api/internal/*.

Only the token lives here; who the caller is (role, status, department) is read
from the users table on each request by ``batchops.identity``. The two schemes are
declared as FastAPI security dependencies so /docs offers an Authorize button; they
never answer themselves (``auto_error=False``): a missing credential is the contract's
401, raised by the caller of :func:`decode_token` / :func:`check_service_token`.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from datetime import timedelta
from functools import lru_cache

import jwt
from fastapi.security import APIKeyHeader, HTTPBearer

from batchops.core.db import utcnow
from batchops.core.errors import ForbiddenError, UnauthorizedError
from batchops.settings import IpNetwork

SERVICE_TOKEN_HEADER = "X-Service-Token"
bearer_scheme = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="`batchops token <userId>` prints one (HS256, BATCHOPS_JWT_SECRET, with sub and exp)",
    auto_error=False,
)
service_token_scheme = APIKeyHeader(
    name=SERVICE_TOKEN_HEADER,
    scheme_name="serviceToken",
    description="BATCHOPS_SERVICE_TOKEN, for /api/internal/*",
    auto_error=False,
)


def create_token(user_id: str, secret: str, ttl: timedelta = timedelta(hours=24)) -> str:
    now = utcnow()
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


def decode_token(token: str, secret: str) -> str:
    """The caller's id, from a token whose signature and claims check out now."""
    try:
        sub, expires_at = _verified(token, secret)
    except jwt.ExpiredSignatureError as exc:
        raise UnauthorizedError("Token expired") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise UnauthorizedError(f"Invalid token: no {exc.claim} claim") from exc
    except jwt.PyJWTError as exc:
        raise UnauthorizedError("Invalid token") from exc
    if expires_at <= utcnow().timestamp():  # PyJWT's rule and clock
        raise UnauthorizedError("Token expired")
    return sub


@lru_cache(maxsize=4096)
def _verified(token: str, secret: str) -> tuple[str, float]:
    """(sub, exp) of a valid token. A client sends the same token with every request and
    checking its signature is the costly part, so each is checked once; only a token that passed is
    kept (a failure raises), and its expiry is checked again on every use. A token without
    ``exp`` would be valid forever: refused."""
    claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise jwt.InvalidTokenError("sub must be a non-empty string")
    return sub, float(claims["exp"])


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header value (as :data:`bearer_scheme` reads it)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_service_token(given: str | None, expected: str) -> None:
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise UnauthorizedError("Missing or invalid service token")


def check_client_ip(host: str | None, allowed: Sequence[IpNetwork] | None) -> None:
    """403 unless ``host`` (the request's client address) is in one of the ``allowed``
    networks (``Settings.batch_allowed_networks``); None allows any address."""
    if allowed is None:
        return
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        raise ForbiddenError("Client address unknown: not allowed") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if not any(address in network for network in allowed):
        raise ForbiddenError(f"IP address {address} is not allowed")
