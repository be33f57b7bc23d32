"""Load test: a real `emu3 serve` process on 127.0.0.1 and many concurrent clients (benchmarks/serve_load.py).

Every request must be answered with its own images (its prompt, its seeds) or refused with 503 and
Retry-After (the clients retry twice after Retry-After); none lost or mixed up. Bounded: 24
requests, a 60 s limit per attempt, and the server stops when the script ends. Prints the p50/p95
latency figures.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_concurrent_clients_are_answered_or_refused_never_lost(emu3_fixture):
    cmd = [sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--model", str(emu3_fixture / "Emu3-tiny"),
           "--requests", "24", "--clients", "12", "--queue-size", "6", "--max-batch-images", "4", "--timeout", "60",
           "--retries", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    print(f"\nserve load: {report['ok']} ok, {report['refused']} refused ({report['answers_503']} answers 503), "
          f"p50 {report['p50_s']} s, "
          f"p95 {report['p95_s']} s, batch sizes {report['server']['batch_sizes']}")
    assert report["lost"] == 0 and report["ok"] + report["refused"] == 24
    assert report["ok"] >= 6 and report["answers_503"] > 0  # the queue (6) filled up and refused some
    assert report["server"]["images"] == report["ok"] and report["server"]["failed"] == 0
    assert max(int(size) for size in report["server"]["batch_sizes"]) > 1  # concurrent requests were batched
