"""The benchmark scripts measure what they say: generate.py, serve_load.py, shapes_decoding.py, memory.py and
tokenizer_codes.py on tiny presets or the bundled model (CPU, a few seconds each)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def load(name: str):
    """benchmarks/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """benchmarks/NAME.py ARGS run in a fresh process."""
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_generate_times_transformers_like_ours_and_reports_memory_and_forwards_per_image(monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    generate = load("generate")
    calls = []
    hf_generate = transformers.Emu3ForCausalLM.generate

    def counted(self, *args, **kwargs):
        calls.append(1)
        return hf_generate(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Emu3ForCausalLM, "generate", counted)
    assert generate.main(["--preset", "tiny", "--grid", "2", "2", "--batch", "2", "--repeats", "3",
                          "--compare-transformers"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(calls) == 1 + 3  # a warm-up, then best of --repeats, as ours
    assert "peak_memory_mb" not in report  # one figure per implementation, not both runs folded together
    ours, theirs = report["emu3"], report["transformers"]
    assert ours["peak_memory_mb"] > 0 and theirs["peak_memory_mb"] > 0
    # each forward serves the whole batch: one forward per token of the batch, over its 2 images
    assert ours["forwards_per_image"] == ours["tokens_per_image"] / 2 == 9 / 2


def test_serve_load_p95_is_the_nearest_rank():
    percentile = load("serve_load").percentile
    assert percentile(list(range(30, 0, -1)), 95) == 29  # ceil(28.5) = 29th of 30; round() gave the 28th
    assert percentile(list(range(1, 15)), 95) == 14  # ceil(13.3) = 14th of 14
    assert percentile(list(range(1, 21)), 95) == 19
    assert percentile([7.0], 95) == 7.0


def test_shapes_decoding_refuses_fp8_on_a_cpu_before_loading_anything():
    done = script("shapes_decoding", "--device", "cpu", "--quantize", "fp8")
    assert done.returncode == 1
    assert done.stderr.strip() == ("shapes_decoding.py: fp8 weights need a CUDA GPU with compute capability >= 8.9 "
                                   "(Ada, Hopper or newer)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("name", ["shapes_decoding", "memory"])
def test_cuda_without_a_gpu_is_a_clear_error(name):
    done = script(name, "--device", "cuda")
    assert done.returncode == 1
    assert done.stderr.strip() == f"{name}.py: --device cuda was asked for but no CUDA GPU is available"


def test_memory_prompt_has_the_asked_length():
    done = script("memory", "--preset", "tiny", "--grid", "2", "2", "--prompt-len", "12")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["prompt_len"] == 12
    too_short = script("memory", "--prompt-len", "5")
    assert too_short.returncode == 2 and "--prompt-len must be at least 6" in too_short.stderr


def test_tokenizer_codes_leaves_no_temporary_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = script("tokenizer_codes", "--pictures", "4", "--psnr-pictures", "1", env={**os.environ, "TMPDIR": str(tmp)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["pictures"] == 4
    assert list(tmp.iterdir()) == []
