"""`create_app`: the FastAPI application around one loaded Emu3 bundle.

Assembles the pieces: the worker that owns the model (started and stopped with the app), the
guard (API key, body size), OpenAI-shaped errors, the images and chat endpoints, `GET /v1/models`,
`GET /health`, the web page at `/` with its files under `/static/`, and the OpenAPI schema at
`/openapi.json` (browsable at `/docs`). It does not load models or bind sockets: `emu3 serve` does.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from emu3.pipelines import Emu3
from emu3.serve import chat_routes, errors, image_routes
from emu3.serve.guard import Guard
from emu3.serve.schemas import Health, ModelCard, ModelList
from emu3.serve.settings import Settings
from emu3.serve.worker import Worker

STATIC = Path(__file__).with_name("static")


def create_app(m: Emu3, settings: Settings | None = None) -> FastAPI:
    """The application serving `m`. Its worker thread runs while the app's lifespan does."""
    settings = settings or Settings()
    worker = Worker(m, settings)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="emu3", summary="Emu3 text-to-image and chat about images, OpenAI-compatible",
                  description="With an API key set, /v1/ endpoints need `Authorization: Bearer <key>`. "
                              "Errors are `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
                  lifespan=lifespan)
    app.state.worker = worker
    errors.install(app)
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)
    app.include_router(image_routes.router)
    app.include_router(chat_routes.router)

    @app.get("/v1/models", response_model=ModelList, summary="The one model this server serves")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name, created=started)])

    @app.get("/health", response_model=Health, summary="Liveness, queue and counters")
    async def health() -> Health:
        return Health(model=settings.model_name, max_images=settings.max_n, **worker.snapshot())

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
