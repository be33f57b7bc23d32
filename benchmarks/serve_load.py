"""Load test of `emu3 serve`: many concurrent clients against a real server process; prints one JSON object.

    python benchmarks/serve_load.py --model ../shared/fixtures/emu3-tiny-original/Emu3-tiny
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --requests 64 --clients 32

Starts the server on a free 127.0.0.1 port (or uses `--url`), then `--clients` threads send
`--requests` image requests in all, each with its own prompt and seed (consecutive seeds, so the
server can batch them). Every answer is checked: a 200 must hold n PNG images of the reported size
with the request's own seeds (seed, seed + 1, ...) and prompt; a 503 must carry Retry-After, and
the client waits that long and tries again, up to `--retries` times (then the request counts as
refused). Anything else (another status, a wrong or mixed-up answer, a timeout, a connection
error) counts as lost. Reports latency percentiles of the answered requests (from a request's
first attempt to its answer), throughput, and the server's batch statistics; exits with status 1
if anything was lost. Bounded: each attempt has `--timeout`, and the server it started is stopped
at the end. Uses only the standard library (and emu3.serve.launch).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import statistics
import struct
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext


def one_request(url: str, index: int, args: argparse.Namespace) -> dict:
    """Send request `index` (retrying after 503s) and judge its answer: outcome ok, refused or lost."""
    n = args.n
    prompt, seed = f"load test request {index}: a red circle", args.seed + index * n
    body = json.dumps({"prompt": prompt, "n": n, "seed": seed}).encode()
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    request = urllib.request.Request(f"{url}/v1/images/generations", body, headers, method="POST")
    start = time.perf_counter()
    for attempt in range(args.retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as answer:
                status, payload = answer.status, answer.read()
            break
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
            retry_after = err.headers.get("Retry-After", "")
            if status != 503 or not retry_after.isdigit():
                break
            if attempt == args.retries:
                return {"outcome": "refused", "refusals": attempt + 1}
            time.sleep(int(retry_after))
        except (urllib.error.URLError, OSError) as err:
            return {"outcome": "lost", "why": f"{type(err).__name__}: {err}"}
    seconds = time.perf_counter() - start
    if status != 200:
        return {"outcome": "lost", "why": f"status {status}: {payload[:200]!r}"}
    problem = check(json.loads(payload), prompt, seed, n)
    if problem:
        return {"outcome": "lost", "why": f"request {index}: {problem}"}
    return {"outcome": "ok", "seconds": seconds, "refusals": attempt}


def check(body: dict, prompt: str, seed: int, n: int) -> str | None:
    """What is wrong with an images answer for (prompt, seed, n), or None."""
    data = body.get("data", [])
    if len(data) != n:
        return f"{len(data)} images for n={n}"
    if [d.get("seed") for d in data] != list(range(seed, seed + n)):
        return f"seeds {[d.get('seed') for d in data]} for seed {seed}: someone else's images"
    if any(d.get("revised_prompt") != prompt for d in data):
        return "another request's prompt"
    for d in data:
        png = base64.b64decode(d["b64_json"])
        if png[:8] != b"\x89PNG\r\n\x1a\n":
            return "not a PNG"
        width, height = struct.unpack(">II", png[16:24])
        if f"{width}x{height}" != body.get("size"):
            return f"a {width}x{height} PNG in an answer of size {body.get('size')}"
    return None


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q`th percentile: the smallest value with at least q% of `values` at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered) / 100) - 1)]


def run(url: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(lambda i: one_request(url, i, args), range(args.requests)))
    wall = time.perf_counter() - start
    with urllib.request.urlopen(urllib.request.Request(f"{url}/health"), timeout=10) as answer:
        health = json.loads(answer.read())
    ok = [r["seconds"] for r in results if r["outcome"] == "ok"]
    lost = [r["why"] for r in results if r["outcome"] == "lost"]
    return {
        "requests": args.requests, "clients": args.clients, "n": args.n,
        "ok": len(ok), "refused": sum(r["outcome"] == "refused" for r in results), "lost": len(lost),
        "answers_503": sum(r.get("refusals", 0) for r in results),
        "lost_reasons": lost[:5],
        "p50_s": round(statistics.median(ok), 3) if ok else None,
        "p95_s": round(percentile(ok, 95), 3) if ok else None,
        "max_s": round(max(ok), 3) if ok else None,
        "wall_s": round(wall, 3),
        "images_per_s": round(len(ok) * args.n / wall, 3),
        "server": health["stats"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="start `emu3 serve --model MODEL` on a free loopback port")
    p.add_argument("--url", help="use this running server instead")
    p.add_argument("--requests", type=int, default=32, help="requests in all (default 32)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--n", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--seed", type=int, default=1000, help="seed of request 0; request i uses seed + i * n")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per attempt (default 120)")
    p.add_argument("--retries", type=int, default=3, help="tries after a 503, each after Retry-After (default 3)")
    p.add_argument("--api-key", help="the server's API key, if it needs one")
    p.add_argument("--queue-size", type=int, default=8, help="the started server's --queue-size (default 8)")
    p.add_argument("--max-batch-images", type=int, default=8, help="the started server's --max-batch-images")
    p.add_argument("--device", default="cpu", help="the started server's --device (default cpu)")
    args = p.parse_args(argv)
    if (args.model is None) == (args.url is None):
        p.error("give --model (start a server) or --url (use a running one)")
    if min(args.requests, args.clients, args.n) < 1 or args.retries < 0:
        p.error("--requests, --clients and --n must be >= 1, --retries >= 0")
    if args.model:
        from emu3.serve.launch import server_process

        server = server_process(["--model", args.model, "--device", args.device, "--queue-size",
                                 str(args.queue_size), "--max-batch-images", str(args.max_batch_images)]
                                + (["--api-key", args.api_key] if args.api_key else []))
    else:
        server = nullcontext(args.url.rstrip("/"))
    with server as url:
        report = run(url, args)
    print(json.dumps(report))
    return 1 if report["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
