"""Write a Shapes dataset to a folder: PNG files plus one JSONL manifest, `write_dataset(...)`.

Records, in this order, one JSON object a line in `manifest.jsonl` (paths relative to the folder):

    {"image": "img/000001.png", "caption": "a red circle above a blue square"}
    {"image": "img/000002.png", "turns": [{"question": "what color is the circle?", "answer": "red"}]}
    {"image": "img/000003.png", "turns": [{"question": "is the red circle on the left?", "answer": "no"}]}
    {"frames": ["vid/000004/00.png", ...], "caption": "a red circle moving right"}

Every record is drawn from its own generator, seeded by (seed, kind, index), so a record does not
change when the counts of the others do, and the same arguments write the same bytes.
This module is a plain function with no command line; it does not read datasets back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from emu3.datasets.shapes.questions import QA, place_questions, questions_for
from emu3.datasets.shapes.render import DEFAULT_IMAGE_SIZE, render
from emu3.datasets.shapes.sampling import sample_captioned_scene
from emu3.datasets.shapes.split import check_split
from emu3.datasets.shapes.video import DEFAULT_FRAMES, render_video, sample_video

MANIFEST = "manifest.jsonl"


def _record_rng(seed: int, kind: str, index: int) -> random.Random:
    return random.Random(f"shapes/{seed}/{kind}/{index}")


def write_dataset(folder: str | Path, n_images: int = 0, n_vqa: int = 0, n_videos: int = 0, seed: int = 0, *,
                  image_size: int = DEFAULT_IMAGE_SIZE, n_frames: int = DEFAULT_FRAMES, questions_per_image: int = 3,
                  n_place: int = 0, split: str = "train", overwrite: bool = False) -> Path:
    """Render `n_images` captioned images, `n_vqa` images with questions, `n_place` images with yes/no
    questions about where their objects are (`place_questions`; scenes with none are drawn again) and
    `n_videos` captioned clips from `split` into `folder`; return the path of the manifest."""
    check_split(split)
    for name, n in (("n_images", n_images), ("n_vqa", n_vqa), ("n_place", n_place), ("n_videos", n_videos)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.exists() and not overwrite:
        raise FileExistsError(f"{manifest} already exists; pass overwrite=True to replace it")
    (folder / "img").mkdir(parents=True, exist_ok=True)

    records = _records(n_images, n_vqa, n_place, n_videos, seed, image_size, n_frames, questions_per_image, split)
    with manifest.open("w") as f:
        for number, record in enumerate(records, start=1):
            if "image" in record:
                record["image"] = _save(record["image"], folder, f"img/{number:06d}.png")
            else:
                record["frames"] = [_save(frame, folder, f"vid/{number:06d}/{t:02d}.png")
                                    for t, frame in enumerate(record["frames"])]
            f.write(json.dumps(record) + "\n")
    return manifest


def _records(n_images: int, n_vqa: int, n_place: int, n_videos: int, seed: int, image_size: int, n_frames: int,
             questions_per_image: int, split: str):
    """Records with PIL images in place of paths, one at a time (a large dataset never sits in memory)."""
    for i in range(n_images):
        sample = sample_captioned_scene(_record_rng(seed, "caption", i), split)
        yield {"image": render(sample.scene, image_size), "caption": sample.caption}
    for i in range(n_vqa):
        rng = _record_rng(seed, "vqa", i)
        scene = sample_captioned_scene(rng, split).scene
        qas = questions_for(scene, rng, questions_per_image, split)
        yield {"image": render(scene, image_size), "turns": _turns(qas)}
    for i in range(n_place):
        rng = _record_rng(seed, "place", i)
        qas: list[QA] = []
        while not qas:
            scene = sample_captioned_scene(rng, split).scene
            qas = place_questions(scene, rng, questions_per_image, split)
        yield {"image": render(scene, image_size), "turns": _turns(qas)}
    for i in range(n_videos):
        video = sample_video(_record_rng(seed, "video", i), n_frames, split)
        yield {"frames": render_video(video, image_size), "caption": video.caption()}


def _turns(qas: list[QA]) -> list[dict[str, str]]:
    return [{"question": qa.question, "answer": qa.answer} for qa in qas]


def _save(image, folder: Path, relative: str) -> str:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return relative
