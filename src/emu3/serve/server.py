"""`Server`: uvicorn's server, which fails the model's jobs with 503 `shutting_down` as soon as it stops.

On SIGTERM or Ctrl+C uvicorn stops accepting connections, waits for in-flight requests (cancelling
them after its graceful timeout, which gives the client a plain-text 500 or a stream cut short), and
only then shuts down the app's lifespan, which stops the worker. This server begins stopping the
worker first, so waiting and running jobs end at once and their requests get the documented JSON
503 (or a stream's `error` event) while uvicorn waits for them. It does not load models or build
the app: `emu3 serve` does.
"""

from __future__ import annotations

import socket

import uvicorn

from emu3.serve.worker import Worker


class Server(uvicorn.Server):
    """A uvicorn server whose shutdown begins with stopping `worker`."""

    def __init__(self, config: uvicorn.Config, worker: Worker) -> None:
        super().__init__(config)
        self.worker = worker

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.worker.begin_stop()  # on the event loop, before uvicorn waits for in-flight requests
        await super().shutdown(sockets)
