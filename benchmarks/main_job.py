"""The README's main job end to end: wall time of `emu3 generate` and `emu3 chat`; prints one JSON object.

    python benchmarks/main_job.py --runs 3

Each run starts fresh processes, as a newcomer's shell does: `emu3 generate "a red circle above a blue
square" -o OUT` then `emu3 chat --image OUT "what color is the circle?"` (the bundled model unless
`--model` and `--vision-tokenizer` are given; seed 0). A last process times the phases inside one
interpreter: importing emu3's pipelines (torch included), loading the model, generating, answering.
"""

from __future__ import annotations

import argparse
import json
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
from emu3.bundled import model_or_bundled, vision_tokenizer_or_bundled
imported = time.perf_counter()
m = Emu3.load(model_or_bundled(sys.argv[1] or None), vision_tokenizer_or_bundled(sys.argv[2] or None))
loaded = time.perf_counter()
image = text_to_image(m, sys.argv[3], seed=0).images[0]
generated = time.perf_counter()
answer(m, [image], sys.argv[4])
answered = time.perf_counter()
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported, "generate_s": generated - loaded,
                  "answer_s": answered - generated}))
"""


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
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
            generate.append(timed([sys.executable, "-m", "emu3", "generate", PROMPT, "-o", out, "--seed", "0",
                                   "--quiet", *model]))
            chat.append(timed([sys.executable, "-m", "emu3", "chat", "--image", out, QUESTION, "--quiet", *model]))
    phases = subprocess.run([sys.executable, "-c", PHASES, args.model or "", args.vision_tokenizer or "", PROMPT,
                             QUESTION], check=True, capture_output=True, text=True).stdout
    print(json.dumps({
        "runs": args.runs, "generate_s": [round(t, 2) for t in generate], "chat_s": [round(t, 2) for t in chat],
        "generate_median_s": round(statistics.median(generate), 2), "chat_median_s": round(statistics.median(chat), 2),
        "phases_s": {k: round(v, 3) for k, v in json.loads(phases).items()},
    }, indent=2))


if __name__ == "__main__":
    main()
