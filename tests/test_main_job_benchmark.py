"""benchmarks/main_job.py times the README's main job on the bundled model and reports every phase."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_main_job_benchmark_reports_the_commands_and_the_phases():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "main_job.py"), "--runs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert len(report["generate_s"]) == len(report["chat_s"]) == 1
    assert report["generate_median_s"] == report["generate_s"][0] > 0 and report["chat_median_s"] > 0
    phases = report["phases_s"]
    assert set(phases) == {"import_s", "load_s", "generate_s", "answer_s"} and all(v > 0 for v in phases.values())


def test_main_job_benchmark_finds_the_vision_tokenizer_beside_another_model(emu3_fixture):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "main_job.py"), "--runs", "1",
                           "--model", str(emu3_fixture / "Emu3-tiny")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # the bundled vision tokenizer is no pair for this model
    assert set(json.loads(done.stdout)["phases_s"]) == {"import_s", "load_s", "generate_s", "answer_s"}


def test_main_job_benchmark_shows_why_a_command_failed(tmp_path):
    missing = tmp_path / "no-such-model"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "main_job.py"), "--runs", "1",
                           "--model", str(missing)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("emu3 generate ") and f"checkpoint folder {missing} does not exist" in done.stderr
