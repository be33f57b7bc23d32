"""Errors as the OpenAI API shapes them: `{"error": {"message", "type", "param", "code"}}`.

`APIError` is raised anywhere in request handling; `install` registers handlers that turn it,
request-validation errors (malformed JSON, wrong types, unknown fields: the message names the
field) and Starlette's own HTTP errors (404, 405) into that JSON shape. Anything unexpected becomes
a 500 with the same shape, and the server keeps serving. This module does not decide limits.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("emu3.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 499: "client_closed_request",
          503: "server_overloaded"}
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}


class APIError(Exception):
    """An error answer: HTTP status, a message naming the problem, and the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def field_path(loc: tuple, *, sent_key: bool = False) -> str:
    """`("body", "messages", 0, "content", "list[Part]", 1)` -> `messages[0].content[1]`.

    With `sent_key` the last part is a key the client sent (an unknown field), named whatever it is:
    `("body", "messages", 0, "top k")` -> `messages[0]["top k"]`.
    """
    parts = loc[1:] if loc and loc[0] == "body" else loc
    if sent_key:
        *parts, key = parts
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:  # drop union-branch tags like 'list[Part]'
            path += f".{part}" if path else part
    if sent_key:
        if not path:
            path = key
        elif key.isidentifier():
            path += f".{key}"
        else:
            path += f"[{json.dumps(key, ensure_ascii=False)}]"
    return path


def validation_error(errors: list[dict]) -> APIError:
    """One APIError for pydantic's errors: the deepest field wins (the most specific union branch)."""
    if not errors:
        return APIError(400, "the request is invalid")
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", first["msg"])
        where = f" at character {first['loc'][-1]}" if isinstance(first["loc"][-1], int) else ""
        return APIError(400, f"the request body is not valid JSON: {reason}{where}", code="invalid_json")
    depth = max(len(e["loc"]) for e in errors)
    deepest = [e for e in errors if len(e["loc"]) == depth]
    path = field_path(deepest[0]["loc"], sent_key=deepest[0]["type"] == "extra_forbidden")
    if deepest[0]["type"] == "missing":
        if not path:
            return APIError(400, "the request needs a JSON object body", code="missing_body")
        return APIError(400, f"field '{path}' is required", param=path, code="missing_field")
    if deepest[0]["type"] == "extra_forbidden":
        return APIError(400, f"unknown field '{path}'", param=path, code="unknown_field")
    if not path:
        return APIError(400, "the request body must be a JSON object, sent with 'Content-Type: application/json'",
                        code="invalid_body")
    messages = list(dict.fromkeys(e["msg"] for e in deepest))
    return APIError(400, f"field '{path}': {', or '.join(messages)}", param=path, code="invalid_value")


def install(app: FastAPI) -> None:
    """Register the handlers that give every error answer the OpenAI shape."""

    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)
