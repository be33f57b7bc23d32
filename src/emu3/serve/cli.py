"""`emu3 serve`: its arguments, and loading the model and running the app under uvicorn.

`add_parser(subparsers)` registers the subcommand on the `emu3` command. Only `cmd_serve` imports
FastAPI and uvicorn (the `serve` extra), so the rest of the command works without them. The server
binds to 127.0.0.1 unless `--host` says otherwise; the API key can come from `--api-key` or the
EMU3_API_KEY environment variable (which keeps it out of the process list).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from emu3.cli import finite_number, whole_number
from emu3.serve.settings import Settings


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `serve` to the `emu3` subcommands."""
    defaults = Settings()
    p = subparsers.add_parser("serve", help="serve the HTTP API and the web page",
                              description="Serve an OpenAI-compatible HTTP API (images, chat) and a web page.")
    p.add_argument("--model", help="language-model folder (original or -hf) or hub id "
                   "(default: the bundled Shapes model)")
    p.add_argument("--vision-tokenizer", help="vision-tokenizer folder (default: found beside --model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="model dtype: bf16, fp16, fp32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--quantize", choices=["int8", "fp8"], help="weight-only quantization of the LM (torchao)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole_number("a port", 0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("EMU3_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/; printable ASCII only, since clients send "
                        "other characters in a header each their own way (default: $EMU3_API_KEY, else no key)")
    p.add_argument("--model-name", help="the model's id in the API (default: the model folder's name)")
    p.add_argument("--queue-size", type=int, default=defaults.queue_size,
                   help=f"requests that may wait before new ones get 503 (default {defaults.queue_size})")
    p.add_argument("--max-batch-images", type=int, default=defaults.max_batch_images,
                   help=f"images generated together in one model call; also caps a request's n, which is at "
                        f"most {defaults.max_n} (default {defaults.max_batch_images})")
    p.add_argument("--preview-interval", type=finite_number("the preview interval", 0, inclusive=True),
                   default=defaults.preview_interval,
                   help=f"seconds between partial-image previews; 0: every row (default {defaults.preview_interval})")
    p.set_defaults(run=cmd_serve, json=False)
    return p


def cmd_serve(args: argparse.Namespace) -> dict:
    try:
        import uvicorn

        from emu3.serve.app import create_app
        from emu3.serve.server import Server
    except ImportError as err:
        raise ValueError(f"serving needs the serve extra ({err}): pip install 'emu3[serve]'") from None
    from emu3.bundled import model_or_bundled
    from emu3.checkpoint import EMU35_FAMILY, detect_family
    from emu3.cli import resolve_device, resolve_dtype
    from emu3.pipelines import Emu3

    args.model = str(model_or_bundled(args.model))
    settings = _settings(args)
    if detect_family(args.model) == EMU35_FAMILY:
        raise ValueError(f"{args.model} is an Emu3.5 checkpoint; emu3 serve serves Emu3 checkpoints only")
    if not _is_loopback(args.host) and settings.api_key is None:
        print(f"emu3 serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              f"address can use the model", file=sys.stderr)
    device = resolve_device(args.device)
    m = Emu3.load(args.model, args.vision_tokenizer, device=device, dtype=resolve_dtype(args.dtype, device),
                  quantize=args.quantize)
    app = create_app(m, settings)
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, timeout_graceful_shutdown=5), app.state.worker)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down: the usual way to stop it
        pass
    return {}


def _settings(args: argparse.Namespace) -> Settings:
    """The server's settings for parsed `serve` arguments whose `model` is resolved. A request's images
    are generated in one model call, so `--max-batch-images` also caps its n."""
    defaults = Settings()
    return Settings(model_name=args.model_name or Path(str(args.model).rstrip("/")).name, api_key=args.api_key,
                    queue_size=args.queue_size, max_batch_images=args.max_batch_images,
                    max_n=min(defaults.max_n, args.max_batch_images), preview_interval=args.preview_interval)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
