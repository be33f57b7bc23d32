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
