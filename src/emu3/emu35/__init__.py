"""Emu3.5 (BAAI): tasks, prompts, the interleaved text-and-image decode loop, results and viewer.

`Emu35.load(folder)` loads the LM, tokenizer and IBQ vision tokenizer; `run_task(m, "story", ...)`
runs a task with its official settings and returns `InterleavedResult`s, which `save` to a folder
as images + `result.json` + `index.html`. Modules: `tasks` (settings), `prompts` (layouts as ids),
`loop` (decoding), `cache` (the two-stream KV cache), `result` / `viewer` (output), `images`
(IBQ pre/post-processing), `bundle`, `pipeline`, `cli`.
"""

from emu3.emu35.bundle import Emu35
from emu3.emu35.pipeline import chat, run_task
from emu3.emu35.result import InterleavedResult, Segment
from emu3.emu35.tasks import ASPECT_RATIOS, TASKS, TaskSettings

__all__ = ["Emu35", "run_task", "chat", "InterleavedResult", "Segment", "TASKS", "TaskSettings", "ASPECT_RATIOS"]
