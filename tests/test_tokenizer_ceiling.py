"""benchmarks/tokenizer_ceiling.py runs on the bundled tokenizer and reports every round trip it promises."""

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tokenizer_ceiling_reports_each_round_trip():
    cmd = [sys.executable, str(REPO / "benchmarks" / "tokenizer_ceiling.py"), "--codebooks", "32", "64",
           "--pictures", "8", "--prompts", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    modes = ["as_is", "codebook_32", "codebook_64", "unquantized"]
    assert all(math.isfinite(report[m]["psnr_db"]) and 0 <= report[m]["claims"] <= 1 for m in modes)
    assert 0 < report["edge_patches"] < 8 * 64  # 8 pictures of 8x8 patches, most of them flat
    # a 32-entry codebook (11 flat colors + 21 edge codes) cannot beat the shipped one on every picture's edges
    assert report["codebook_32"]["psnr_db"] < report["as_is"]["psnr_db"]
