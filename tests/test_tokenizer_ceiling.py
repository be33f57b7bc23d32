"""benchmarks/tokenizer_ceiling.py runs on the bundled tokenizer and reports every round trip it promises."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_tokenizer_ceiling_reports_each_round_trip():
    cmd = [sys.executable, str(REPO / "benchmarks" / "tokenizer_ceiling.py"), "--codebooks", "32", "64",
           "--pictures", "8", "--prompts", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    modes = ["as_is", "codebook_32", "codebook_64", "unquantized"]
    assert all(math.isfinite(report[m]["psnr_db"]) and 0 <= report[m]["claims"] <= 1 for m in modes)
    as_is = report["as_is"]
    assert 0 < as_is["edge_pixels"] < 0.5 and 0 < as_is["edge_error_share"] <= 1
    assert as_is["psnr_edges_db"] < as_is["psnr_db"] < as_is["psnr_elsewhere_db"]  # flat areas copy best
    assert 0 < report["edge_patches"] < 8 * 64  # 8 pictures of 8x8 patches, most of them flat
    # a 32-entry codebook (11 flat colors + 21 edge codes) cannot beat the shipped one on every picture's edges
    assert report["codebook_32"]["psnr_db"] < report["as_is"]["psnr_db"]


def test_near_edges_marks_pixels_within_reach_of_a_color_change():
    spec = importlib.util.spec_from_file_location("tokenizer_ceiling", REPO / "benchmarks" / "tokenizer_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    picture = np.zeros((8, 8, 3), np.uint8)
    picture[:, 4:] = 255  # a vertical edge between columns 3 and 4
    assert module.near_edges(picture, reach=0).any(0).tolist() == [False] * 3 + [True] * 2 + [False] * 3
    assert module.near_edges(picture, reach=1).all(0).tolist() == [False] * 2 + [True] * 4 + [False] * 2
    assert not module.near_edges(np.zeros((8, 8, 3)), reach=2).any()
