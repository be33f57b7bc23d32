"""Vision side of Emu3: the VQ tokenizers (pixels <-> codes: Emu3's MoVQ `VisionTokenizer`, Emu3.5's
`IBQ`) and image pre/post-processing.

Nothing here knows about the language model or its token ids.
"""

from emu3.vision.ibq import IBQ
from emu3.vision.image_processing import ImageProcessor, load_frames, load_image, smart_resize, to_rgb
from emu3.vision.vq import Decoder, Encoder, VectorQuantizer, VisionTokenizer

__all__ = [
    "ImageProcessor", "load_frames", "load_image", "smart_resize", "to_rgb",
    "Decoder", "Encoder", "VectorQuantizer", "VisionTokenizer", "IBQ",
]
