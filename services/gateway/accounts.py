"""Accounts: signup / signin / me / logout, and the bearer-token dependency of every other route.

Passwords are hashed with argon2id (argon2-cffi, off the event loop). Tokens are the HS256 JWTs
of services.runtime.auth, so the gateway forwards the user's own token to the gRPC services.
Logout revokes the token (services/gateway/revocations.py): the gateway refuses it at once, and the
gRPC services learn it through Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Annotated

import asyncpg
import jwt
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, EmailStr, Field, StringConstraints

from services.gateway.errors import (
    DATABASE_UNAVAILABLE,
    INTERNAL,
    UNAUTHORIZED,
    ApiError,
    error_responses,
    unauthorized,
)
from services.gateway.state import Caller, GatewayState, get_state
from services.runtime.api_keys import FORWARDED_TOKEN_SECONDS, looks_like_api_key
from services.runtime.auth import mint_token, verify_token
from services.runtime.errors import Unauthenticated

log = structlog.get_logger("docent.gateway.accounts")
router = APIRouter(prefix="/api/auth", tags=["auth"])
bearer_scheme = HTTPBearer(auto_error=False, description="The access_token from /api/auth/signup or /signin")

_hasher = PasswordHasher()


Username = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]


_USER_EXAMPLE = {"id": "5d2e8f8a-1b7c-4a0e-8f5e-3c9d2a1b0c4d", "email": "ada@example.com", "username": "ada",
                 "created_at": "2024-05-01T12:00:00.123456Z"}


class SignupRequest(BaseModel):
    email: EmailStr
    username: Username
    password: Password = Field(description="at least 8 characters")

    model_config = {"json_schema_extra": {"examples": [
        {"email": "ada@example.com", "username": "ada", "password": "correct horse"}]}}


class SigninRequest(BaseModel):
    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]

    model_config = {"json_schema_extra": {"examples": [{"email": "ada@example.com", "password": "correct horse"}]}}


class UserOut(BaseModel):
    id: str
    email: str
    username: str
    created_at: dt.datetime

    model_config = {"json_schema_extra": {"examples": [_USER_EXAMPLE]}}


class TokenOut(BaseModel):
    access_token: str = Field(description="send as `Authorization: Bearer <access_token>`")
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds until the token expires")
    user: UserOut

    model_config = {"json_schema_extra": {"examples": [
        {"access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI1ZDJlOGY4YSJ9.c2lnbmF0dXJl",
         "token_type": "bearer", "expires_in": 86400, "user": _USER_EXAMPLE}]}}


class MessageOut(BaseModel):
    message: str

    model_config = {"json_schema_extra": {"examples": [{"message": "Successfully logged out"}]}}


def _user_out(row: asyncpg.Record) -> UserOut:
    return UserOut(id=str(row["id"]), email=row["email"], username=row["username"], created_at=row["created_at"])


def _token_out(state: GatewayState, row: asyncpg.Record) -> TokenOut:
    ttl = state.settings.jwt_ttl_minutes * 60
    return TokenOut(access_token=mint_token(state.secret, str(row["id"]), ttl), expires_in=ttl, user=_user_out(row))


_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    """A hash to verify against when the email is unknown, so timing does not reveal accounts."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash(uuid.uuid4().hex)
    return _DUMMY_HASH


def _verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def current_caller(request: Request,
                         credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> Caller:
    """The bearer token's (or API key's) user. `?access_token=` is accepted on SSE GETs (EventSource sends
    no headers)."""
    state = get_state(request)
    token = credentials.credentials if credentials else None
    if token is None and request.method == "GET" and request.url.path.endswith("/events"):
        token = request.query_params.get("access_token")
    if not token:
        raise unauthorized("Not authenticated", "TOKEN_MISSING")
    if looks_like_api_key(token):
        user_id, grant = await state.api_keys.authenticate(token)
        # the services verify tokens: forward a short-lived one that carries the key's grant
        forwarded = mint_token(state.secret, user_id, FORWARDED_TOKEN_SECONDS, key=grant)
        return Caller(user_id=user_id, token=forwarded, token_id="", key=grant)
    try:
        identity = verify_token(state.secret, token)
    except Unauthenticated as error:
        raise unauthorized("Token expired" if error.reason == "TOKEN_EXPIRED" else "Invalid token",
                           error.reason) from None
    if identity.token_id and await state.revocations.is_revoked(identity.token_id):
        raise unauthorized("Token revoked", "TOKEN_REVOKED")
    return Caller(user_id=identity.user_id, token=token, token_id=identity.token_id, key=identity.key)


CallerDep = Annotated[Caller, Depends(current_caller)]
StateDep = Annotated[GatewayState, Depends(get_state)]


@router.post("/signup", status_code=status.HTTP_201_CREATED, response_model=TokenOut, operation_id="signUp",
             responses=error_responses({409: "email already registered (EMAIL_TAKEN)", 500: INTERNAL,
                                        503: DATABASE_UNAVAILABLE}, validation=True))
async def signup(body: SignupRequest, state: StateDep) -> TokenOut:
    """Create an account and sign it in (201 with a token)."""
    pool = state.db()
    email = str(body.email)
    if await pool.fetchval("SELECT 1 FROM users WHERE lower(email) = lower($1)", email):
        raise ApiError(409, "Email already registered", "EMAIL_TAKEN")
    password_hash = await asyncio.to_thread(_hasher.hash, body.password)
    row = await pool.fetchrow(
        """INSERT INTO users (id, email, username, password_hash) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING RETURNING id, email, username, created_at""",
        uuid.uuid4(), email, body.username, password_hash)
    if row is None:  # a concurrent signup with the same email won
        raise ApiError(409, "Email already registered", "EMAIL_TAKEN")
    log.info("user_signed_up", user_id=str(row["id"]))
    return _token_out(state, row)


@router.post("/signin", response_model=TokenOut, operation_id="signIn",
             responses=error_responses({401: "bad credentials (BAD_CREDENTIALS)",
                                        429: "too many failed attempts for this email (SIGNIN_RATE_LIMITED); "
                                             "Retry-After says when to try again",
                                        500: INTERNAL, 503: DATABASE_UNAVAILABLE}, validation=True))
async def signin(body: SigninRequest, state: StateDep) -> TokenOut:
    """A new token for an email and password."""
    limiter = state.signin_limits  # shared by the gateway replicas through Redis
    key = body.email.lower()
    wait = await limiter.retry_after(key)
    if wait:
        raise ApiError(429, f"Too many failed sign-in attempts; try again in {wait} s", "SIGNIN_RATE_LIMITED",
                       {"Retry-After": str(wait)})
    row = await state.db().fetchrow(
        "SELECT id, email, username, created_at, password_hash FROM users WHERE lower(email) = lower($1)", body.email)
    ok = await asyncio.to_thread(_verify_password, row["password_hash"] if row else None, body.password)
    if not ok or row is None:
        await limiter.failed(key)
        raise unauthorized("Incorrect email or password", "BAD_CREDENTIALS")
    await limiter.succeeded(key)
    if _hasher.check_needs_rehash(row["password_hash"]):
        new_hash = await asyncio.to_thread(_hasher.hash, body.password)
        await state.db().execute("UPDATE users SET password_hash = $2 WHERE id = $1", row["id"], new_hash)
    return _token_out(state, row)


@router.get("/me", response_model=UserOut, operation_id="getCurrentUser",
            responses=error_responses({401: UNAUTHORIZED + "; or no account for the token (USER_NOT_FOUND)",
                                       500: INTERNAL, 503: DATABASE_UNAVAILABLE}))
async def me(caller: CallerDep, state: StateDep) -> UserOut:
    """The signed-in user."""
    try:
        user_id = uuid.UUID(caller.user_id)
    except ValueError:
        raise unauthorized("No account for this token", "USER_NOT_FOUND") from None
    row = await state.db().fetchrow("SELECT id, email, username, created_at FROM users WHERE id = $1", user_id)
    if row is None:
        raise unauthorized("No account for this token", "USER_NOT_FOUND")
    return _user_out(row)


@router.post("/logout", response_model=MessageOut, operation_id="logout",
             responses=error_responses({401: UNAUTHORIZED, 403: "called with an API key (SESSION_REQUIRED)",
                                        500: INTERNAL}))
async def logout(caller: CallerDep, state: StateDep) -> MessageOut:
    """Revoke the token of this request: it is refused from now on, here and by the services.
    An API key is revoked with DELETE /api/keys/{id} instead."""
    if caller.key is not None:
        raise ApiError(403, "an API key cannot log out: revoke it with DELETE /api/keys/{id}", "SESSION_REQUIRED")
    claims = jwt.decode(caller.token, options={"verify_signature": False})  # verified by current_caller
    expires = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
    if caller.token_id:
        await state.revocations.revoke(caller.token_id, expires)
    return MessageOut(message="Successfully logged out")


async def user_id_for_email(database_url: str, email: str) -> str | None:
    """The id of the account with this email (case-insensitive), for the operator CLI (`docent token --email`)."""
    conn = await asyncpg.connect(database_url)
    try:
        user_id = await conn.fetchval("SELECT id FROM users WHERE lower(email) = lower($1)", email.strip())
    finally:
        await conn.close()
    return str(user_id) if user_id else None
