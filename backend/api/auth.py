"""HTTP Basic auth for the API (--api-auth "user:pass,user2:pass2")."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from backend.errors import InvalidRequest

CHALLENGE = {"WWW-Authenticate": "Basic"}


def parse_credentials(text: str | None) -> dict[str, str]:
    """'u:p,u2:p2' -> {u: p, u2: p2}. A password may contain ':' (A1111 breaks on it)."""
    credentials: dict[str, str] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise InvalidRequest("--api-auth", f"expected user:password, got {entry.split(':')[0]!r}...")
        credentials[user] = password
    return credentials


# auto_error=False: our own 401 message for missing credentials, with the challenge header.
SCHEME = HTTPBasic(auto_error=False, description="--api-auth user:password")


class BasicAuth:
    """A dependency that accepts only the given users (compared in constant time, as A1111)."""

    def __init__(self, credentials: dict[str, str]) -> None:
        self.credentials = dict(credentials)

    def __call__(self, given: Annotated[HTTPBasicCredentials | None, Depends(SCHEME)]) -> str:
        """The user name of a request with valid credentials; 401 otherwise."""
        if given is None:
            raise HTTPException(401, "Not authenticated", headers=CHALLENGE)
        if not self.accepts(given):
            raise HTTPException(401, "Incorrect username or password", headers=CHALLENGE)
        return given.username

    def accepts(self, given: HTTPBasicCredentials | None) -> bool:
        """Whether `given` are the credentials of one of the users."""
        if given is None:
            return False
        matched = False
        for user, password in self.credentials.items():
            # Check every entry so timing does not reveal which user names exist.
            same_user = secrets.compare_digest(given.username.encode(), user.encode())
            same_password = secrets.compare_digest(given.password.encode(), password.encode())
            matched |= same_user and same_password
        return matched
