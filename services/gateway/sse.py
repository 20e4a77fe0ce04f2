"""Server-sent events: framing, heartbeats, and a gRPC server stream opened before the response.

A stream is opened (and its first message awaited) before the 200 is sent, so NOT_FOUND,
UNAUTHENTICATED and friends still become proper HTTP errors; failures after that arrive as an
`error` event, since a started response cannot change its status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from services.gateway.errors import error_event, from_rpc

HEARTBEAT_SECONDS = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def event(name: str, data: BaseModel | dict[str, Any], event_id: str | None = None) -> bytes:
    """One SSE frame; `data` is JSON (one line, so no multi-line data framing is needed).

    A model is sent with the fields its conversion set (services.gateway.schemas): an unset optional
    field is absent, a field set to None is null.
    """
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json", exclude_unset=True)
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {name}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


async def with_heartbeat(source: AsyncIterator[bytes], interval: float = HEARTBEAT_SECONDS) -> AsyncIterator[bytes]:
    """Pass `source` through, adding a comment line whenever it is quiet for `interval` seconds
    (keeps proxies from closing an idle stream and lets the server notice a gone client)."""
    iterator = source.__aiter__()
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield b": ping\n\n"
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            try:
                await pending
            except (asyncio.CancelledError, StopAsyncIteration, Exception):
                pass
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(frames: AsyncIterator[bytes], heartbeat: float = HEARTBEAT_SECONDS) -> StreamingResponse:
    return StreamingResponse(with_heartbeat(frames, heartbeat), media_type="text/event-stream",
                             headers=SSE_HEADERS)


async def open_stream(call: grpc.aio.UnaryStreamCall) -> Any:
    """The first message of a server stream (grpc.aio.EOF when it is empty); errors raise as HTTP errors."""
    try:
        return await call.read()
    except grpc.aio.AioRpcError as error:
        call.cancel()
        raise from_rpc(error) from None
    except BaseException:
        call.cancel()
        raise


async def relay(call: grpc.aio.UnaryStreamCall, first: Any, frames_for: Any) -> AsyncIterator[bytes]:
    """Frames for each message of `call` (starting with `first`), then an `error` event on failure.

    `frames_for(message)` returns the frames for one message. The call is cancelled when the
    client goes away.
    """
    message = first
    try:
        while message is not grpc.aio.EOF:
            for frame in frames_for(message):
                yield frame
            message = await call.read()
    except grpc.aio.AioRpcError as error:
        yield event("error", error_event(from_rpc(error)))
    finally:
        call.cancel()
