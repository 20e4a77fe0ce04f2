"""HS256 bearer tokens shared by the gateway (which issues them) and the gRPC services.

When DOCENT_JWT_SECRET is unset, a random secret is generated once and kept in the data dir
(mode 0600), so `make run` needs no configuration and tokens survive restarts.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt

from services.runtime.config import Settings
from services.runtime.errors import Unauthenticated

ALGORITHM = "HS256"
ISSUER = "docent"


READ = "read"
WRITE = "write"
ACCESS_LEVELS = (READ, WRITE)


@dataclass(frozen=True)
class KeyGrant:
    """What an API key lets its holder do: `access` is "read" (list, search, chat) or "write" (also
    upload, replace, delete); the per-minute limits, when set, apply to this key on top of its user's."""

    key_id: str
    access: str = READ
    chats_per_minute: int | None = None
    uploads_per_minute: int | None = None
    # the collection ids the key reaches (None: every collection its user belongs to)
    collections: tuple[str, ...] | None = None

    def claims(self) -> dict[str, object]:
        claims: dict[str, object] = {"id": self.key_id, "access": self.access}
        if self.chats_per_minute is not None:
            claims["cpm"] = self.chats_per_minute
        if self.uploads_per_minute is not None:
            claims["upm"] = self.uploads_per_minute
        if self.collections is not None:
            claims["col"] = list(self.collections)
        return claims

    @classmethod
    def from_claims(cls, claims: object) -> KeyGrant:
        if not isinstance(claims, dict) or not isinstance(claims.get("id"), str) \
                or claims.get("access") not in ACCESS_LEVELS:
            raise Unauthenticated("invalid token", reason="TOKEN_INVALID")
        collections = claims.get("col")
        if collections is not None and not (isinstance(collections, list)
                                            and all(isinstance(value, str) for value in collections)):
            raise Unauthenticated("invalid token", reason="TOKEN_INVALID")
        return cls(key_id=claims["id"], access=claims["access"], chats_per_minute=_limit(claims.get("cpm")),
                   uploads_per_minute=_limit(claims.get("upm")),
                   collections=tuple(collections) if collections is not None else None)


def _limit(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class Identity:
    user_id: str
    token_id: str
    # operator tokens (`docent token --admin`, `docent reindex`) may call the maintenance RPCs; the
    # gateway never issues them
    admin: bool = False
    # set when the caller authenticated with an API key (services.runtime.api_keys), directly or
    # through the gateway, which forwards a short-lived token carrying the key's grant
    key: KeyGrant | None = None
    # the collections whose documents the caller may search, when a service that resolved them (chat,
    # from the ingest service, which owns collections) minted this token for the retrieval service;
    # None in users' own tokens (see call_context.searchable_collections)
    collections: tuple[str, ...] | None = None

    @property
    def can_write(self) -> bool:
        return self.key is None or self.key.access == WRITE

    @property
    def confined_key_id(self) -> str | None:
        """The API key whose own conversations are all this caller reaches, without their user's chat memory:
        a key limited to collections must not read what its user discussed elsewhere. None otherwise."""
        if self.key is not None and self.key.collections is not None:
            return self.key.key_id
        return None


# The example values the repository publishes or once published (.env.example, the old
# deploy/k8s/secret.yaml; compose takes .env's). Anyone can read them, so anyone could sign tokens
# with them: refused, fail closed.
# tests/test_config.py checks that every value published in the repository is refused.
PUBLISHED_SECRETS = frozenset({
    "change-me-to-a-random-secret-of-at-least-32-characters",
    "CHANGE-ME-generate-with-openssl-rand-hex-32",
})


def is_published_secret(secret: str) -> bool:
    return secret in PUBLISHED_SECRETS or "change-me" in secret.lower()


def jwt_secret(settings: Settings) -> str:
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value()
        if len(secret) < 32:
            raise SystemExit("docent: invalid setting DOCENT_JWT_SECRET: must be at least 32 characters")
        if is_published_secret(secret):
            raise SystemExit(
                "docent: DOCENT_JWT_SECRET is an example value published in the Docent repository: anyone could "
                "sign tokens with it. Generate one with `openssl rand -hex 32`, or leave it unset for a single "
                "machine (`docent up` then generates one and keeps it in the data dir)")
        return secret
    return _persisted_secret(settings.secrets_dir / "jwt_secret")


def _persisted_secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    candidate = secrets.token_urlsafe(48)
    # O_EXCL: when several services start at once, the first writer wins and the others read it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            text = path.read_text().strip()
            if text:
                return text
            time.sleep(0.01)
        raise
    with os.fdopen(fd, "w") as handle:
        handle.write(candidate)
    return candidate


ADMIN_SCOPE = "admin"


def mint_token(secret: str, user_id: str, ttl_seconds: int, *, token_id: str | None = None,
               admin: bool = False, key: KeyGrant | None = None,
               collections: list[str] | tuple[str, ...] | None = None) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(user_id),
        "iss": ISSUER,
        "iat": now,
        "exp": now + int(ttl_seconds),
        "jti": token_id or uuid.uuid4().hex,
    }
    if admin:
        claims["scope"] = ADMIN_SCOPE
    if key is not None:
        claims["key"] = key.claims()
    if collections is not None:
        claims["cols"] = list(collections)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Identity:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
            options={"require": ["sub", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from None
    except jwt.InvalidTokenError:
        raise Unauthenticated("invalid token", reason="TOKEN_INVALID") from None
    key = KeyGrant.from_claims(claims["key"]) if "key" in claims else None
    collections = claims.get("cols")
    if collections is not None and not (isinstance(collections, list)
                                        and all(isinstance(value, str) for value in collections)):
        raise Unauthenticated("invalid token", reason="TOKEN_INVALID")
    return Identity(user_id=str(claims["sub"]), token_id=str(claims.get("jti", "")),
                    admin=claims.get("scope") == ADMIN_SCOPE and key is None, key=key,
                    collections=tuple(collections) if collections is not None else None)


def bearer_token(header_value: str | None) -> str:
    if not header_value:
        raise Unauthenticated("missing bearer token", reason="TOKEN_MISSING")
    scheme, _, token = header_value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'", reason="TOKEN_MISSING")
    return token.strip()
