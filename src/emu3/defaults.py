"""The official Emu3-Gen sampling defaults, as plain numbers: guidance scale 3.0 and top-k 2048.

Torch-free, so that the command-line parsers and the server's request schemas can show them
without importing the model code; `emu3.pipelines.text_to_image.DEFAULT_SAMPLING` is built from them.
"""

GUIDANCE_SCALE = 3.0
TOP_K = 2048
