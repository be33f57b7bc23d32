"""Benchmarks that measure the quality of generated images and answers.

Only `emu3.eval.shapes` (ShapesEval, for the Shapes world) lives here. Nothing in this package
runs a model by itself: callers pass functions that generate images or answer questions.
"""
