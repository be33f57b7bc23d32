"""The request queue: batching of compatible image jobs with per-request seeds, the bound (503 with
Retry-After), clients that leave (their slot is freed, a running job stops early), shutdown, and the
text-delta bookkeeping of streamed answers."""

import asyncio
import base64
import dataclasses
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from emu3.generation import SamplingConfig  # noqa: E402
from emu3.pipelines import text_to_image  # noqa: E402
from emu3.prompting import NEGATIVE_PROMPT, POSITIVE_PROMPT  # noqa: E402
from emu3.serve.app import create_app  # noqa: E402
from emu3.serve.settings import Settings  # noqa: E402
from emu3.serve.worker import ChatJob, ImageJob, ImageSpec, QueueFull, ShuttingDown, TextDeltas, Worker  # noqa: E402

SPEC = ImageSpec("1:1", 3.0, POSITIVE_PROMPT, NEGATIVE_PROMPT, SamplingConfig(top_k=2048))


async def terminal(job, timeout: float = 120.0) -> dict:
    async def wait():
        while True:
            event = await job.events.get()
            if event["type"] in ("result", "error"):
                return event
    return await asyncio.wait_for(wait(), timeout)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_compatible_jobs_share_a_call_and_each_gets_its_own_seeds_and_images(tiny):
    other = dataclasses.replace(SPEC, cfg=2.0)

    async def scenario():
        worker = Worker(tiny, Settings(max_batch_images=4))
        jobs = {"a": ImageJob("a", 1, SPEC, 10), "b": ImageJob("b", 1, SPEC, 20), "c": ImageJob("c", 2, SPEC, 11),
                "d": ImageJob("d", 1, SPEC, None), "e": ImageJob("e", 1, other, 12), "f": ImageJob("f", 1, SPEC, 9),
                "g": ImageJob("g", 1, SPEC, 13)}
        for job in jobs.values():  # all waiting before the worker starts, so batching is deterministic
            worker.submit(job)
        worker.start()
        try:
            return {name: (await terminal(job))["outcome"] for name, job in jobs.items()}, worker.stats
        finally:
            worker.stop()

    out, stats = asyncio.run(scenario())
    # a (seed 10) runs with f (9) before it and c (11, 12) after it: 4 images, full. b (20) runs with
    # the unseeded d, which takes 21; e has other settings; g (13) found no run to join in time.
    assert {k: o.seeds for k, o in out.items()} == {"a": [10], "b": [20], "c": [11, 12], "d": [21], "e": [12],
                                                    "f": [9], "g": [13]}
    assert {k: o.batch_images for k, o in out.items()} == {"a": 4, "b": 2, "c": 4, "d": 2, "e": 1, "f": 4, "g": 1}
    assert stats.batches == 4 and stats.images == 8 and stats.batch_sizes == {4: 1, 2: 1, 1: 2}
    # None mixed up: a batched image is the image its prompt and seed give alone.
    for name, cfg, index, seed in (("c", 3.0, 1, 12), ("d", 3.0, 0, 21), ("e", 2.0, 0, 12)):
        alone = text_to_image(tiny, name, seed=seed, cfg=cfg).images[0]
        # The same tokens; the vision decoder may round a pixel differently in a batch of 4 than alone.
        assert np.abs(pixels(out[name].images_b64[index]).astype(int) - np.asarray(alone)).max() <= 1, name


def test_bound_cancel_and_shutdown(tiny):
    async def scenario():
        worker = Worker(tiny, Settings(queue_size=2))  # never started: jobs only wait
        first, second, third = (ImageJob(p, 1, SPEC, None) for p in "xyz")
        assert worker.submit(first) == 0 and worker.submit(second) == 1
        with pytest.raises(QueueFull) as full:
            worker.submit(third)
        assert full.value.retry_after >= 1 and "2 requests waiting" in str(full.value)
        worker.cancel(first)
        assert worker.snapshot()["queue"]["waiting"] == 1 and worker.stats.cancelled == 1
        assert worker.submit(third) == 1
        worker.stop()
        for job in (second, third):
            assert isinstance((await terminal(job))["error"], ShuttingDown)
        with pytest.raises(ShuttingDown):
            worker.submit(ImageJob("late", 1, SPEC, None))

    asyncio.run(scenario())


def test_a_job_whose_client_left_stops_early_and_the_worker_goes_on(tiny):
    async def scenario():
        worker = Worker(tiny, Settings(progress_interval=0))
        worker.start()
        try:
            long = ChatJob("You are a helpful assistant.", [], "Tell a long story.", [], max_new_tokens=900,
                           sampling=SamplingConfig(greedy=True), seed=None, stream=True)
            worker.submit(long)
            assert (await asyncio.wait_for(long.events.get(), 60))["type"] == "delta"
            worker.cancel(long)
            assert (await terminal(long))["type"] == "error"
            assert worker.stats.chats == 0 and worker.stats.cancelled == 1
            after = ImageJob("after", 1, SPEC, 3)
            worker.submit(after)
            assert (await terminal(after))["type"] == "result"
        finally:
            worker.stop()

    asyncio.run(scenario())


# -- the same through HTTP, driving the ASGI app by hand so a client can disconnect on cue ----------

async def call(app, path: str, body: dict, gone: asyncio.Event) -> list[dict]:
    """One POST; after its body the client waits for `gone`, then disconnects. Returns what was sent."""
    raw = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}
    delivered, sent = False, []

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_http_full_queue_is_503_with_retry_after_and_leaving_frees_the_slot(tiny):
    app = create_app(tiny, Settings(queue_size=2))  # no lifespan: the worker never takes a job
    worker = app.state.worker
    waiting = lambda: worker.snapshot()["queue"]["waiting"]  # noqa: E731

    async def scenario():
        gone = [asyncio.Event() for _ in range(3)]
        plain = asyncio.create_task(call(app, "/v1/images/generations", {"prompt": "a"}, gone[0]))
        stream = asyncio.create_task(call(app, "/v1/images/generations", {"prompt": "b", "stream": True}, gone[1]))
        await until(lambda: waiting() == 2)
        refused = await call(app, "/v1/images/generations", {"prompt": "c"}, asyncio.Event())
        assert refused[0]["status"] == 503
        headers = dict(refused[0]["headers"])
        assert int(headers[b"retry-after"]) >= 1
        assert json.loads(refused[1]["body"])["error"]["code"] == "queue_full"
        gone[0].set()
        await asyncio.wait_for(plain, 10)
        assert waiting() == 1
        gone[1].set()
        sent = await asyncio.wait_for(stream, 10)
        assert b"image_generation.queued" in sent[1]["body"]
        assert waiting() == 0
        chat = asyncio.create_task(call(app, "/v1/chat/completions",
                                        {"messages": [{"role": "user", "content": "hi"}]}, gone[2]))
        await until(lambda: waiting() == 1)
        gone[2].set()
        await asyncio.wait_for(chat, 10)
        assert waiting() == 0 and worker.stats.cancelled == 3

    asyncio.run(scenario())


class SlowLM:
    """A language model proxy that takes 50 ms a forward pass, so that a generation is still running when
    the test shuts the server down."""

    def __init__(self, lm) -> None:
        self._lm = lm

    def __getattr__(self, name: str):
        return getattr(self._lm, name)

    def hidden(self, *args, **kwargs):
        time.sleep(0.05)
        return self._lm.hidden(*args, **kwargs)


def test_shutdown_answers_in_flight_requests_503_shutting_down(tiny):
    """uvicorn waits for in-flight requests (and cancels them after its graceful timeout: a plain-text 500,
    a stream cut short) before the app's lifespan stops the worker. `Server` stops the worker first."""
    uvicorn = pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from emu3.serve.launch import free_port
    from emu3.serve.server import Server

    app = create_app(dataclasses.replace(tiny, lm=SlowLM(tiny.lm)), Settings(progress_interval=0))
    worker, port = app.state.worker, free_port()
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                   timeout_graceful_shutdown=2), worker)
    chat = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 900}

    async def scenario():
        serving = asyncio.create_task(server.serve())
        await until(lambda: server.started)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            running = asyncio.create_task(client.post("/v1/chat/completions", json=chat))
            await until(lambda: worker.snapshot()["queue"]["running"] == 1)
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json={**chat, "stream": True}))
            await until(lambda: worker.snapshot()["queue"]["waiting"] == 1)
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            answers = await asyncio.gather(running, waiting)
        await asyncio.wait_for(serving, 30)
        return answers

    running, waiting = asyncio.run(scenario())
    assert running.status_code == 503, running.text
    assert running.json()["error"]["code"] == "shutting_down"
    errors = [json.loads(line[6:]) for line in waiting.text.splitlines() if line.startswith('data: {"error"')]
    assert [e["error"]["code"] for e in errors] == ["shutting_down"], waiting.text
    assert worker.stats.chats == 0


def test_text_deltas_add_up_to_the_final_answer():
    grows = ["", " ", " Hel", " Hello", " Hello \ufffd", " Hello w\u00f6", " Hello w\u00f6rld ",
             " Hello w\u00f6rld  \n"]
    deltas = TextDeltas()
    pieces = [deltas.update(text) for text in grows]
    final = grows[-1].strip()
    pieces.append(deltas.finish(final))
    assert "".join(pieces) == final and pieces[2] == "Hel"
    assert all("\ufffd" not in p for p in pieces)
