"""What every HTTP request passes before routing: the API key check and the body-size limit.

A plain ASGI middleware, so it runs before FastAPI reads or parses anything: a request without the
key gets 401 even when its body is malformed, and a body over the limit is refused with 413 after
reading at most limit + one chunk (whether or not Content-Length was sent). The body it read is
replayed to the application. Only paths under /v1/ need the key; the page, /health and the OpenAPI
schema stay open. This module does not validate the body's content.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emu3.serve.errors import APIError


class Guard:
    """ASGI middleware: `Authorization: Bearer <api_key>` on /v1/ (if a key is set) and `max_body_bytes`."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope["path"].startswith("/v1/") and not self._authorized(scope):
            await _answer(APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}),
                          scope, receive, send)
            return
        too_big = APIError(413, f"the request body is larger than the limit of {self.max_body_bytes} bytes",
                           code="body_too_large")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(too_big, scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await _answer(too_big, scope, receive, send)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _authorized(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the already-read body once, then the connection's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await error.response()(scope, receive, send)
