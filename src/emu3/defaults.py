"""The official Emu3-Gen sampling defaults, as plain numbers: guidance scale 3.0 and top-k 2048; and
the plausibility constraint of the models this project trains.

Torch-free, so that the command-line parsers and the server's request schemas can show them
without importing the model code; `emu3.pipelines.text_to_image.default_sampling` is built from them.
"""

GUIDANCE_SCALE = 3.0
TOP_K = 2048
# `SamplingConfig.plausibility` for a compact-vocabulary model (one trained by this project, such as the
# bundled Shapes model); official models keep 0, their official sampling (benchmarks/RESULTS.md)
COMPACT_PLAUSIBILITY = 0.001
PLAUSIBILITY_HELP = ("with guidance, never draw a code whose conditional probability is below this fraction of the "
                     f"most likely one's (default: {COMPACT_PLAUSIBILITY} for a compact-vocabulary model such as the "
                     "bundled one; 0, the official sampling, otherwise)")
