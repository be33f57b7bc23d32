"""The Shapes world: a seeded synthetic world of colored shapes to train and measure small models on.

Scenes hold one to three circles, squares and triangles of eight palette colors and two sizes on a
plain background. The package draws them, captions them from a small grammar whose claims are
checkable, asks questions about them, animates them, and writes datasets:

    from emu3.datasets.shapes import parse_caption, scene_for, render
    render(scene_for(parse_caption("a red circle above a blue square"), seed=0)).save("gt.png")

Modules, one concern each: `world` (vocabulary and its geometric meaning), `scene` (the Scene and
Obj dataclasses), `render` (pixels), `claims` (checkable facts), `description` (what a caption
says), `captions` (sentences out and in), `layout` (scenes satisfying a description), `split`
(train / held-out compositions), `sampling` (random captioned scenes), `questions` (VQA),
`video` (moving objects), `manifest` (writing a dataset). Scoring lives in `emu3.eval.shapes`.
Nothing here imports torch.
"""

from emu3.datasets.shapes.captions import CaptionError, caption_text, parse_caption
from emu3.datasets.shapes.claims import (CATEGORIES, BackgroundClaim, Claim, ColorClaim, CountClaim, ObjectClaim,
                                         PositionClaim, RelationClaim, ShapeClaim, SizeClaim)
from emu3.datasets.shapes.description import Description, Mention
from emu3.datasets.shapes.layout import LayoutError, scene_for
from emu3.datasets.shapes.manifest import write_dataset
from emu3.datasets.shapes.questions import QA, QUESTION_KINDS, place_questions, questions_for
from emu3.datasets.shapes.render import DEFAULT_IMAGE_SIZE, render, render_array
from emu3.datasets.shapes.sampling import CaptionedScene, sample_captioned_scene, sample_description
from emu3.datasets.shapes.scene import Obj, Scene
from emu3.datasets.shapes.split import HELD_OUT_PAIRS, HELD_OUT_RELATIONS, SPLITS, split_of
from emu3.datasets.shapes.video import DIRECTIONS, Mover, Video, render_video, sample_video
from emu3.datasets.shapes.world import COLORS, PALETTE, POSITIONS, RELATIONS, SHAPES, SIZES

__all__ = [
    "CaptionError", "caption_text", "parse_caption",
    "CATEGORIES", "BackgroundClaim", "Claim", "ColorClaim", "CountClaim", "ObjectClaim", "PositionClaim",
    "RelationClaim", "ShapeClaim", "SizeClaim",
    "Description", "Mention", "LayoutError", "scene_for", "write_dataset",
    "QA", "QUESTION_KINDS", "place_questions", "questions_for",
    "DEFAULT_IMAGE_SIZE", "render", "render_array",
    "CaptionedScene", "sample_captioned_scene", "sample_description",
    "Obj", "Scene", "HELD_OUT_PAIRS", "HELD_OUT_RELATIONS", "SPLITS", "split_of",
    "DIRECTIONS", "Mover", "Video", "render_video", "sample_video",
    "COLORS", "PALETTE", "POSITIONS", "RELATIONS", "SHAPES", "SIZES",
]
