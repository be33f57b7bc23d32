"""Between a request handler and the worker: submit a job, then wait for it or stream its events.

`submit` turns a full queue into 503 with Retry-After. `result` waits for a job's outcome while
watching the connection, and cancels the job (freeing its queue slot) if the client disconnects.
`event_stream` sends a job's events as server-sent events, with keep-alive comments during long
silences, and cancels the job when the response ends early. Worker errors become `APIError`s here:
a `ValueError` is the request's fault (400), a stopping server 503, anything else 500. This module
does not format the events: the endpoint modules do.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable, Iterable

from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from emu3.serve.errors import APIError
from emu3.serve.worker import Job, QueueFull, ShuttingDown, Worker


def submit(worker: Worker, job: Job) -> int:
    """Queue the job; jobs waiting before it. A full queue or a stopping server is a 503."""
    try:
        return worker.submit(job)
    except QueueFull as err:
        raise APIError(503, f"{err}; retry in {err.retry_after} s", code="queue_full",
                       headers={"Retry-After": str(err.retry_after)}) from None
    except ShuttingDown as err:
        raise APIError(503, str(err), code="shutting_down") from None


def as_api_error(err: Exception) -> APIError:
    """The error answer for an exception a job ended with."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, ValueError):
        return APIError(400, str(err), code="invalid_request")
    if isinstance(err, ShuttingDown):
        return APIError(503, str(err), code="shutting_down")
    return APIError(500, f"generation failed: {type(err).__name__}: {err}")


async def result(job: Job, request: Request, worker: Worker):
    """The job's outcome. Raises its error as an APIError; cancels the job if the client leaves."""
    outcome = asyncio.ensure_future(_terminal(job))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({outcome, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not outcome.done():
            raise APIError(499, "the client closed the connection", code="client_closed")
        event = outcome.result()
        if event["type"] == "error":
            raise as_api_error(event["error"])
        return event["outcome"]
    finally:
        outcome.cancel()
        gone.cancel()
        worker.cancel(job)  # a no-op for a finished job


async def _terminal(job: Job) -> dict:
    while True:
        event = await job.events.get()
        if event["type"] in ("result", "error"):
            return event


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(data: dict | str, event: str | None = None) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def event_stream(job: Job, worker: Worker, render: Callable[[dict], Iterable[str]],
                 first: Iterable[str] = (), last: Iterable[str] = ()) -> StreamingResponse:
    """A text/event-stream response: `first`, then `render(event)` for each job event up to the job's
    result or error, then `last`. The job is cancelled when the response ends, finished or not."""

    async def body() -> AsyncIterator[str]:
        for chunk in first:
            yield chunk
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), worker.settings.keepalive_interval)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            for chunk in render(event):
                yield chunk
            if event["type"] in ("result", "error"):
                break
        for chunk in last:
            yield chunk

    # Starlette runs the background task after the stream ends, also when the client disconnects.
    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(worker.cancel, job))
