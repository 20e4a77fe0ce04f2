"""The gRPC server interceptors, one concern each, chained by `serve()` in this order:

1. `RequestScope` — request id, the caller's deadline, one canonical log line and metrics per RPC;
2. `ErrorMapping` — Docent errors, backing-service outages and unexpected exceptions → gRPC status
   with `google.rpc.ErrorInfo` (an unexpected exception's detail never reaches the caller);
3. `Authentication` — bearer JWT or API key, revocation (logout), the caller's identity for the servicer.

Each one wraps every handler kind (unary or streaming, either side) through `ScopedInterceptor`:
a subclass only says what happens around one RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
import structlog

from services.runtime import metrics
from services.runtime.api_keys import FORWARDED_TOKEN_SECONDS, looks_like_api_key
from services.runtime.auth import Identity, bearer_token, mint_token, verify_token
from services.runtime.call_context import (
    Outcome,
    deadline_var,
    identity_var,
    outcome_var,
    request_id_var,
    token_var,
)
from services.runtime.errors import DocentError, Unauthenticated, backing_outage, build_status, unstorable_text

log = structlog.get_logger("docent.grpc")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
PUBLIC_METHOD_PREFIXES = (HEALTH_PREFIX, "/grpc.reflection.")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class ScopedInterceptor(grpc.aio.ServerInterceptor):
    """Runs `scope(method, context)`, an async context manager, around every RPC it applies to."""

    # the outermost interceptor counts the messages a streaming RPC sends, for its log line
    counts_messages = False

    def applies_to(self, method: str) -> bool:
        return True

    def scope(self, method: str, context: grpc.aio.ServicerContext) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def intercept_service(self, continuation: Continuation,
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or not self.applies_to(details.method):
            return handler
        method = details.method
        kinds = (
            (handler.unary_unary, grpc.unary_unary_rpc_method_handler, False),
            (handler.stream_unary, grpc.stream_unary_rpc_method_handler, False),
            (handler.unary_stream, grpc.unary_stream_rpc_method_handler, True),
            (handler.stream_stream, grpc.stream_stream_rpc_method_handler, True),
        )
        for behavior, make_handler, streams_out in kinds:
            if behavior is None:
                continue
            # a coroutine that streams with context.write() (e.g. the health Watch) is wrapped as unary
            if streams_out and inspect.isasyncgenfunction(behavior):
                wrapped = self._around_stream(behavior, method)
            else:
                wrapped = self._around_unary(behavior, method)
            return make_handler(wrapped, request_deserializer=handler.request_deserializer,
                                response_serializer=handler.response_serializer)
        return handler

    def _around_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self.scope(method, context):
                return await behavior(request, context)

        return wrapper

    def _around_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self.scope(method, context) as entered:
                async for response in behavior(request, context):
                    if self.counts_messages:
                        entered.messages_sent += 1
                    yield response

        return wrapper


class RequestScope(ScopedInterceptor):
    """Request id (the caller's `x-request-id`, else a new one), the caller's deadline, and one
    log line plus metrics per RPC (health checks: metrics only)."""

    counts_messages = True

    def __init__(self, service: str) -> None:
        self._service = service

    @contextlib.asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[Outcome]:
        metadata = dict(context.invocation_metadata() or ())
        request_id = str(metadata.get("x-request-id") or uuid.uuid4().hex)
        outcome = Outcome()
        tokens: list[Any] = [request_id_var.set(request_id), outcome_var.set(outcome)]
        remaining = context.time_remaining()
        if remaining is not None:
            tokens.append(deadline_var.set(time.monotonic() + remaining))
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
        started = time.perf_counter()
        try:
            yield outcome
        except asyncio.CancelledError:
            outcome.code_name = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            if outcome.code_name == "OK":  # the servicer aborted on its own: keep its code
                code = context.code()
                outcome.code_name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            self._record(method, outcome, time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id", "rpc")
            for token in reversed(tokens):
                token.var.reset(token)

    def _record(self, method: str, outcome: Outcome, duration: float) -> None:
        metrics.GRPC_REQUESTS.labels(self._service, method, outcome.code_name).inc()
        metrics.GRPC_LATENCY.labels(self._service, method).observe(duration)
        if method.startswith(HEALTH_PREFIX):
            return
        fields: dict[str, Any] = {"code": outcome.code_name, "duration_ms": round(duration * 1000, 2)}
        if outcome.reason:
            fields["reason"] = outcome.reason
        if outcome.messages_sent:
            fields["messages_sent"] = outcome.messages_sent
        level = log.warning if outcome.code_name in ("INTERNAL", "UNKNOWN") else log.info
        level("rpc", **fields)


class ErrorMapping(ScopedInterceptor):
    """Turns what a servicer (or the authentication below) raises into a gRPC status."""

    @contextlib.asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        try:
            yield
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            raise
        except DocentError as error:
            _record(error.code, error.reason)
            await context.abort_with_status(error.to_status())
        except Exception as error:
            refused = unstorable_text(error)
            if refused is not None:
                _record(refused.code, refused.reason)
                await context.abort_with_status(refused.to_status())
            outage = backing_outage(error)
            if outage is not None:
                _record(outage.code, outage.reason)
                log.warning("backing_service_unavailable", reason=outage.reason, error=type(error).__name__)
                await context.abort_with_status(outage.to_status())
            if isinstance(error, NotImplementedError):
                _record(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED")
                await context.abort_with_status(build_status(
                    grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet", "NOT_IMPLEMENTED"))
            _record(grpc.StatusCode.INTERNAL, "INTERNAL")
            log.error("rpc_unhandled_exception", exc_info=error)
            await context.abort_with_status(build_status(
                grpc.StatusCode.INTERNAL, "internal error", "INTERNAL", {"request_id": request_id_var.get()}))


def _record(code: grpc.StatusCode, reason: str) -> None:
    outcome = outcome_var.get()
    if outcome is not None:
        outcome.code_name, outcome.reason = code.name, reason


class RevocationChecker(Protocol):
    async def is_revoked(self, token_id: str) -> bool: ...


class KeyVerifier(Protocol):
    async def identify(self, key: str) -> Identity: ...


class Authentication(ScopedInterceptor):
    """Every method but health and reflection needs `authorization: Bearer <credential>`: a JWT signed
    with the deployment's secret and not revoked by a logout, or an API key (services.runtime.api_keys);
    the servicer then reads the caller's identity."""

    def __init__(self, jwt_secret: str, revocations: RevocationChecker | None = None,
                 api_keys: KeyVerifier | None = None) -> None:
        self._secret = jwt_secret
        # every service refuses logged-out tokens; ingest and chat also accept API keys, retrieval is
        # internal: its callers are the other services, which forward a token
        self._revocations = revocations
        self._api_keys = api_keys

    def applies_to(self, method: str) -> bool:
        return not method.startswith(PUBLIC_METHOD_PREFIXES)

    async def _identify(self, credential: str) -> tuple[Identity, str]:
        """The caller, and the token to forward on the caller's behalf to other services."""
        if looks_like_api_key(credential):
            if self._api_keys is None:
                raise Unauthenticated("this service does not accept API keys: call the gateway or the ingest "
                                      "and chat services", reason="API_KEY_NOT_ACCEPTED")
            identity = await self._api_keys.identify(credential)
            # downstream services verify tokens, not keys: forward a short-lived one carrying the key's grant
            forwarded = mint_token(self._secret, identity.user_id, FORWARDED_TOKEN_SECONDS, key=identity.key)
            return identity, forwarded
        identity = verify_token(self._secret, credential)
        if self._revocations is not None and identity.token_id \
                and await self._revocations.is_revoked(identity.token_id):
            raise Unauthenticated("the token has been revoked (logged out)", reason="TOKEN_REVOKED")
        return identity, credential

    @contextlib.asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        metadata = dict(context.invocation_metadata() or ())
        identity, forwarded = await self._identify(bearer_token(metadata.get("authorization")))
        tokens = [identity_var.set(identity), token_var.set(forwarded)]
        fields = {"user_id": identity.user_id}
        if identity.key is not None:
            fields["api_key_id"] = identity.key.key_id
        structlog.contextvars.bind_contextvars(**fields)
        try:
            yield
        finally:
            structlog.contextvars.unbind_contextvars(*fields)
            for reset in reversed(tokens):
                reset.var.reset(reset)
