"""The README's main job end to end: wall time of `emu3 generate` and `emu3 chat`; prints one JSON object.

    python benchmarks/main_job.py --runs 3

Each run starts fresh processes, as a newcomer's shell does: `emu3 generate "a red circle above a blue
square" -o OUT` then `emu3 chat --image OUT "what color is the circle?"` (seed 0; the bundled model
unless `--model` is given, with the vision tokenizer found beside it unless `--vision-tokenizer` is).
A last process times the phases inside one interpreter: importing emu3's pipelines (torch included),
loading the model, generating, answering. A failing process stops the benchmark with its stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle above a blue square"
QUESTION = "what color is the circle?"

PHASES = """
import json, sys, time
start = time.perf_counter()
from emu3.pipelines.loading import Emu3
from emu3.pipelines.text_to_image import text_to_image
from emu3.pipelines.understanding import answer
from emu3.bundled import model_or_bundled
imported = time.perf_counter()
m = Emu3.load(model_or_bundled(sys.argv[1] or None), sys.argv[2] or None)
loaded = time.perf_counter()
image = text_to_image(m, sys.argv[3], seed=0).images[0]
generated = time.perf_counter()
answer(m, [image], sys.argv[4])
answered = time.perf_counter()
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported, "generate_s": generated - loaded,
                  "answer_s": answered - generated}))
"""


def run(argv: list[str], what: str) -> str:
    """The stdout of `argv`; if it fails, exit with `what`, its exit status and its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit status {done.returncode}):\n{done.stderr.rstrip()}")
    return done.stdout


def timed_emu3(args: list[str]) -> float:
    """Seconds of a fresh `emu3 ARGS` process."""
    start = time.perf_counter()
    run([sys.executable, "-m", "emu3", *args], shlex.join(["emu3", *args]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default=None, help="LM folder (default: the bundled model)")
    parser.add_argument("--vision-tokenizer", default=None, help="tokenizer folder (default: beside the LM)")
    args = parser.parse_args()
    model = ["--model", args.model] if args.model else []
    model += ["--vision-tokenizer", args.vision_tokenizer] if args.vision_tokenizer else []
    generate, chat = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.png")
        for _ in range(args.runs):
            generate.append(timed_emu3(["generate", PROMPT, "-o", out, "--seed", "0", "--quiet", *model]))
            chat.append(timed_emu3(["chat", "--image", out, QUESTION, "--quiet", *model]))
    phases = run([sys.executable, "-c", PHASES, args.model or "", args.vision_tokenizer or "", PROMPT, QUESTION],
                 "the phase timing")
    print(json.dumps({
        "runs": args.runs, "generate_s": [round(t, 2) for t in generate], "chat_s": [round(t, 2) for t in chat],
        "generate_median_s": round(statistics.median(generate), 2), "chat_median_s": round(statistics.median(chat), 2),
        "phases_s": {k: round(v, 3) for k, v in json.loads(phases).items()},
    }, indent=2))


if __name__ == "__main__":
    main()
