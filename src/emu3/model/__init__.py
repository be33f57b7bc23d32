"""The language model: the decoder (`Transformer`) and its static KV cache."""

from emu3.model.cache import KVCache
from emu3.model.transformer import Transformer

__all__ = ["KVCache", "Transformer"]
