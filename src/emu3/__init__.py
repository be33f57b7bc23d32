"""emu3: the Emu3 family of unified multimodal models in PyTorch."""

__version__ = "0.1.0"
