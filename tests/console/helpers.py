"""Signing in to the console over HTTP (the API's test client, no browser)."""

from __future__ import annotations

import re

import httpx

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def csrf_of(client: httpx.AsyncClient, path: str = "/console/signin") -> str:
    """The session's CSRF token, as a page of the console shows it."""
    r = await client.get(path)
    match = CSRF.search(r.text)
    assert match, r.text[:500]
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, user_id: str, password: str) -> str:
    """Sign in and return the new session's CSRF token."""
    token = await csrf_of(client)
    r = await client.post("/console/signin", data={"userId": user_id, "password": password, "csrf_token": token})
    assert r.status_code == 303, r.text[:500]
    return await csrf_of(client, "/console/mine")
