"""One function per task: text-to-image, understanding/chat, reconstruction, video."""

from emu3.pipelines.loading import Emu3, load
from emu3.pipelines.reconstruct import Reconstruction, reconstruct, reconstruct_path
from emu3.pipelines.text_to_image import ImageResult, text_to_image
from emu3.pipelines.understanding import ChatResult, Conversation, answer, caption
from emu3.pipelines.video import VideoResult, generate_video

__all__ = ["Emu3", "load", "Reconstruction", "reconstruct", "reconstruct_path", "ImageResult", "text_to_image",
           "ChatResult", "Conversation", "answer", "caption", "VideoResult", "generate_video"]
