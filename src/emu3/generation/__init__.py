"""From logits to ids: sampling, guidance, the image-grid constraint and the decode loop."""

from emu3.generation.constraints import ImageGrid, guide
from emu3.generation.loop import generate
from emu3.generation.sampling import SamplingConfig, sample

__all__ = ["ImageGrid", "SamplingConfig", "generate", "guide", "sample"]
