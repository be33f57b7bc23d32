"""`POST /v1/chat/completions`: OpenAI-compatible, multi-turn chat about images, optionally streamed.

Turns OpenAI messages into Emu3's chat layout: optional system (or developer) messages first, then
user and assistant turns alternating and ending with a user turn. A user turn's images come as
`image_url` parts holding data URIs; Emu3 places a turn's images before its text, whatever their
order among the parts. Earlier assistant answers are re-tokenized from their text. Checks limits
and the model's context, queues one `ChatJob`, and answers with a `chat.completion`, or, with
`stream: true`, with `chat.completion.chunk` server-sent events ending in `data: [DONE]`.
"""

from __future__ import annotations

import secrets
import time
from functools import partial
from typing import Callable

import torch
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from emu3.generation import SamplingConfig
from emu3.prompting import SYSTEM_PROMPT, Turn, chat_prompt
from emu3.serve import relay
from emu3.serve.errors import APIError
from emu3.serve.media import image_from_data_uri
from emu3.serve.schemas import ChatCompletion, ChatMessage, ChatRequest, Choice, Message, Usage
from emu3.serve.worker import ChatJob, ChatOutcome, Worker
from emu3.vision import smart_resize

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion, summary="Answer the last user turn",
             responses={200: {"content": {"text/event-stream": {}}}})
async def create_chat_completion(body: ChatRequest, request: Request):
    worker: Worker = request.app.state.worker
    make_job, prompt_tokens = await run_in_threadpool(_plan, body, worker)
    job = make_job()  # on the event loop, where the job's events will arrive
    relay.submit(worker, job)
    ident, created, model = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), worker.settings.model_name

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return relay.sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    def render(event: dict) -> list[str]:
        if event["type"] == "delta":
            return [chunk({"content": event["text"]})]
        if event["type"] == "error":
            return [relay.sse(relay.as_api_error(event["error"]).body())]
        outcome: ChatOutcome = event["outcome"]
        out = [chunk({}, outcome.finish_reason)]
        if body.stream_options is not None and body.stream_options.include_usage:
            out.append(relay.sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                                  "choices": [], "usage": _usage(prompt_tokens, outcome).model_dump()}))
        return out

    if body.stream:
        return relay.event_stream(job, worker, render, first=[chunk({"role": "assistant", "content": ""})],
                                  last=[relay.sse("[DONE]")])
    outcome: ChatOutcome = await relay.result(job, request, worker)
    return ChatCompletion(id=ident, created=created, model=model, usage=_usage(prompt_tokens, outcome), choices=[
        Choice(index=0, message=ChatMessage(content=outcome.text), finish_reason=outcome.finish_reason)])


def _usage(prompt_tokens: int, outcome: ChatOutcome) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=outcome.completion_tokens,
                 total_tokens=prompt_tokens + outcome.completion_tokens)


def _plan(body: ChatRequest, worker: Worker) -> tuple[Callable[[], ChatJob], int]:
    """What makes the request's job, and its prompt's length in tokens (run off the event loop: it decodes
    images)."""
    settings, m = worker.settings, worker.m
    system, turns = _turns(body.messages)
    history, images_seen, count_turns = [], 0, []
    for user, answer in turns:
        text = _text(body.messages[user], user, settings.max_prompt_chars)
        images = _images(body.messages[user], user, worker)
        images_seen += len(images)
        if images_seen > settings.max_images:
            raise APIError(400, f"'messages' hold more than the limit of {settings.max_images} images",
                           param="messages", code="too_many_images")
        answer_ids = m.tokenizer.encode(_text(body.messages[answer], answer, None)) if answer is not None else None
        history.append((text, images, answer_ids))
        count_turns.append(Turn(text, [_placeholder_codes(im, m) for im in images], answer=answer_ids))
    # The prompt's length depends only on the images' code-grid sizes, so placeholders count it exactly.
    prompt_tokens = len(chat_prompt(m.tokenizer, count_turns, system=system, vocab=m.vocab))
    context = m.lm.config.max_position_embeddings
    if prompt_tokens >= context:
        raise APIError(400, f"'messages' are {prompt_tokens} tokens, more than the model's context of "
                            f"{context}", param="messages", code="context_length_exceeded")
    max_new = _max_new_tokens(body, prompt_tokens, context, settings.max_new_tokens)
    greedy = body.temperature == 0 or (body.temperature is None and body.top_p is None and body.top_k is None)
    sampling = SamplingConfig(greedy=greedy, temperature=body.temperature or 1.0, top_k=body.top_k, top_p=body.top_p)
    (text, images, _), earlier = history[-1], history[:-1]
    return partial(ChatJob, system, earlier, text, images, max_new_tokens=max_new, sampling=sampling,
                   seed=body.seed, stream=body.stream), prompt_tokens


def _turns(messages: list[Message]) -> tuple[str, list[tuple[int, int | None]]]:
    """The system prompt and (user index, assistant index or None) per turn; checks the order of roles."""
    systems = []
    start = 0
    while start < len(messages) and messages[start].role in ("system", "developer"):
        systems.append(_text(messages[start], start, None))
        start += 1
    turns: list[tuple[int, int | None]] = []
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i].role != expected:
            where = "system messages must come first; " if messages[i].role in ("system", "developer") else ""
            raise APIError(400, f"messages[{i}] has role '{messages[i].role}' where a '{expected}' message "
                                f"belongs: {where}turns alternate user, assistant and end with user",
                           param=f"messages[{i}].role", code="invalid_message_order")
        if expected == "user":
            turns.append((i, None))
        else:
            turns[-1] = (turns[-1][0], i)
    if not turns or turns[-1][1] is not None:
        raise APIError(400, "'messages': the last one must be a 'user' message (the one to answer)", param="messages",
                       code="invalid_message_order")
    return ("\n".join(systems) if systems else SYSTEM_PROMPT), turns


def _text(message: Message, index: int, limit: int | None) -> str:
    """A message's text (its text parts, joined by newlines); only user messages may hold images."""
    if isinstance(message.content, str):
        text = message.content
    else:
        if message.role != "user":
            for j, part in enumerate(message.content):
                if part.type != "text":
                    raise APIError(400, f"only user messages may hold images, not a '{message.role}' message",
                                   param=f"messages[{index}].content[{j}]", code="invalid_content")
        text = "\n".join(part.text for part in message.content if part.type == "text")
    if limit is not None and len(text) > limit:
        raise APIError(400, f"messages[{index}] holds {len(text)} characters of text, more than the limit of {limit}",
                       param=f"messages[{index}].content", code="prompt_too_long")
    return text


def _images(message: Message, index: int, worker: Worker) -> list:
    if isinstance(message.content, str):
        return []
    s = worker.settings
    return [image_from_data_uri(part.image_url.url, param=f"messages[{index}].content[{j}].image_url.url",
                                max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels,
                                processor=worker.m.processor)
            for j, part in enumerate(message.content) if part.type == "image_url"]


def _placeholder_codes(image, m) -> torch.Tensor:
    """Zeros in the shape of the code grid the vision tokenizer will give `image`."""
    p, factor = m.processor, m.vq.spatial_factor
    height, width = smart_resize(image.height, image.width, p.spatial_factor, p.min_pixels, p.max_pixels)
    return torch.zeros(height // factor, width // factor, dtype=torch.long)


def _max_new_tokens(body: ChatRequest, prompt_tokens: int, context: int, limit: int) -> int:
    asked, param = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens is not None
                    else (body.max_tokens, "max_tokens"))
    room = context - prompt_tokens
    if asked is None:
        return min(limit, room)
    if asked > limit:
        raise APIError(400, f"'{param}' is {asked}, more than the limit of {limit}", param=param,
                       code="max_tokens_too_large")
    if asked > room:
        raise APIError(400, f"'{param}' is {asked}, but the conversation is {prompt_tokens} tokens and the model's "
                            f"context is {context}: at most {room} more fit", param=param,
                       code="context_length_exceeded")
    return asked
