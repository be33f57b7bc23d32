"""Synthetic datasets the project trains and evaluates its own small models on.

Only `emu3.datasets.shapes` (the Shapes world) lives here. Nothing in this package touches the
model, the tokenizers or torch; it produces pictures, captions, questions and manifests.
"""
