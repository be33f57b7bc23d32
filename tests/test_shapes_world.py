"""The Shapes world (emu3.datasets.shapes): rendering, captions and claims, layout, split, questions,
videos and the dataset writer. Deterministic and fast; no model involved."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from emu3.datasets.shapes import (DIRECTIONS, HELD_OUT_PAIRS, PALETTE, CaptionError, Description, Mention, Mover,
                                  Obj, Video, RelationClaim, Scene, caption_text, parse_caption, place_questions,
                                  questions_for, render,
                                  render_array, render_video, sample_captioned_scene, sample_video, scene_for,
                                  split_of, write_dataset)
from emu3.datasets.shapes.split import relation_held_out
from emu3.datasets.shapes.world import position_holds, relation_holds, where


@pytest.fixture(scope="module")
def samples():
    rng = random.Random(0)
    return [sample_captioned_scene(rng, "heldout" if i % 3 == 0 else "train") for i in range(600)]


def test_render_draws_palette_colors_only_at_the_requested_size():
    scene = Scene("black", [Obj("circle", "red", "large", 0.3, 0.3), Obj("triangle", "white", "small", 0.75, 0.75)])
    for size in (16, 64, 128):
        pixels = render_array(scene, size)
        assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
        colors = {tuple(p) for p in pixels.reshape(-1, 3)}
        assert colors == {PALETTE["black"], PALETTE["red"], PALETTE["white"]}
    pixels = render_array(scene, 64)
    assert tuple(pixels[int(0.3 * 64), int(0.3 * 64)]) == PALETTE["red"]
    assert tuple(pixels[2, 2]) == PALETTE["black"]
    assert render(scene).size == (64, 64)
    with pytest.raises(ValueError, match="at least 16"):
        render(scene, 8)


@pytest.mark.parametrize("make, message", [
    (lambda: Scene("red", [Obj("circle", "red", "small", 0.5, 0.5)]), "background's color"),
    (lambda: Scene("red", [Obj("circle", "blue", "large", 0.5, 0.5), Obj("square", "blue", "small", 0.55, 0.5)]),
     "overlap"),
    (lambda: Scene("red", [Obj("circle", "blue", "large", 0.05, 0.5)]), "sticks out"),
    (lambda: Obj("circle", "pink", "small", 0.5, 0.5), "unknown color 'pink'"),
    (lambda: Obj("hexagon", "red", "small", 0.5, 0.5), "unknown shape"),
])
def test_scenes_enforce_the_world_rules(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_scene_dict_round_trip():
    scene = Scene("blue", [Obj("square", "yellow", "small", 0.2, 0.7)])
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    with pytest.raises(ValueError, match="unknown scene keys"):
        Scene.from_dict({"background": "blue", "colour": "x"})


def test_every_sampled_caption_parses_back_and_its_claims_hold_on_its_scene(samples):
    kinds = set()
    for s in samples:
        assert parse_caption(s.caption) == s.description, s.caption
        assert parse_caption(caption_text(s.description)) == s.description
        assert len(s.scene.objects) == s.description.n_objects
        for claim in s.description.claims():
            assert claim.holds(s.scene), (s.caption, claim)
        kinds.add((len(s.description.mentions), s.description.relation is not None,
                   max(m.count for m in s.description.mentions)))
    assert len(kinds) >= 5  # singles, counts, relations, lists of 2 and 3


def test_readme_prompt_parses_to_a_relation():
    d = parse_caption("A red circle above a blue square.")
    assert d == Description((Mention("red", "circle"), Mention("blue", "square")), "above")
    assert RelationClaim("red", "circle", "above", "blue", "square") in d.claims()
    assert caption_text(d) == "a red circle above a blue square"
    assert parse_caption("three small white circles on a black background").n_objects == 3
    assert parse_caption("an image of two orange squares").mentions == (Mention("orange", "square", count=2),)


@pytest.mark.parametrize("text, message", [
    ("a red dog", "cannot read 'a red dog'"),
    ("two red circle", "number and the noun disagree"),
    ("a red circle on a red background", "background's color"),
    ("a red circle and a red circle", "distinct"),
    ("a red circle above two blue squares", "relation links exactly two single objects"),
    ("two red circles, two blue squares", "1 to 3 objects"),
    ("a red circle on a pink background", "unknown background color 'pink'"),
])
def test_captions_outside_the_grammar_are_rejected_with_a_reason(text, message):
    with pytest.raises(CaptionError, match=message):
        parse_caption(text)


def test_sampling_and_layout_are_deterministic():
    a = [sample_captioned_scene(random.Random(7)) for _ in range(3)]
    b = [sample_captioned_scene(random.Random(7)) for _ in range(3)]
    assert a == b
    d = parse_caption("a green triangle to the left of a purple circle")
    assert scene_for(d, 3) == scene_for(d, 3)
    assert scene_for(d, 3) != scene_for(d, 4)


def test_spatial_words():
    assert position_holds("left", 0.2, 0.9) and not position_holds("left", 0.4, 0.5)
    assert position_holds("center", 0.5, 0.6) and not position_holds("center", 0.5, 0.2)
    assert relation_holds("above", (0.5, 0.2), (0.55, 0.7))
    assert not relation_holds("above", (0.2, 0.2), (0.8, 0.4))  # mostly to the left, not above
    assert not relation_holds("left_of", (0.5, 0.5), (0.55, 0.5))  # too close to call
    assert where(0.1, 0.1) == "top left" and where(0.5, 0.9) == "bottom" and where(0.5, 0.5) == "center"
    assert where(0.34, 0.5, margin=0.03) is None


def test_split_holds_out_compositions_but_not_their_parts(samples):
    for s in samples:
        pairs = {(m.color, m.shape) for m in s.description.mentions}
        if split_of(s.description) == "train":
            assert not pairs & HELD_OUT_PAIRS
    held = [s for s in samples if split_of(s.description) == "heldout"]
    assert len(held) == 200
    seen_in_train = {(m.color, m.shape) for s in samples if split_of(s.description) == "train"
                     for m in s.description.mentions}
    for color, shape in HELD_OUT_PAIRS:  # the parts of every held-out pair are trained on
        assert any(c == color for c, _ in seen_in_train) and any(sh == shape for _, sh in seen_in_train)
    assert relation_held_out("square", "below", "triangle") == relation_held_out("triangle", "above", "square")
    assert split_of(parse_caption("a red circle above a blue square")) == "train"
    assert split_of(parse_caption("a purple triangle")) == "heldout"


def test_questions_have_correct_unambiguous_answers(samples):
    rng = random.Random(1)
    kinds, yes_no = set(), []
    for s in samples[:300]:
        scene = s.scene
        for qa in questions_for(scene, rng, 4):
            kinds.add(qa.kind)
            if qa.question == "how many objects are there?":
                assert qa.answer == str(len(scene.objects))
            elif qa.question == "what color is the background?":
                assert qa.answer == scene.background
            elif qa.question.startswith("what color is the "):
                shape = qa.question.removeprefix("what color is the ").rstrip("?")
                assert [o.color for o in scene.objects if o.shape == shape] == [qa.answer]
            elif qa.question.startswith("where is the "):
                color, shape = qa.question.removeprefix("where is the ").rstrip("?").split()
                o, = [o for o in scene.objects if (o.color, o.shape) == (color, shape)]
                assert where(o.x, o.y) == qa.answer
            elif qa.kind == "yes_no":
                yes_no.append(qa.answer)
    assert kinds == {"color", "shape", "count", "position", "background", "yes_no"}
    assert 0.35 < yes_no.count("yes") / len(yes_no) < 0.65
    scene = samples[0].scene
    assert questions_for(scene, random.Random(3), 3) == questions_for(scene, random.Random(3), 3)


def test_place_questions_are_right_and_balanced_per_form(samples):
    """Each form (position, relation) asks as many "yes" as "no", and every answer holds or fails clearly."""
    import re

    from emu3.datasets.shapes.captions import POSITION_PHRASES, RELATION_PHRASES
    from emu3.datasets.shapes.questions import CERTAINTY_MARGIN as m

    position = {phrases[0]: p for p, phrases in POSITION_PHRASES.items()}
    relation = {phrases[0]: r for r, phrases in RELATION_PHRASES.items()}
    pattern = re.compile(r"is the (\w+) (\w+) (.+?)(?: the (\w+) (\w+))?\?")
    rng = random.Random(4)
    answers = {"position": [], "relation": []}
    for s in samples:
        scene = s.scene
        objects = {(o.color, o.shape): o for o in scene.objects}
        asked = place_questions(scene, rng, 6)
        assert len({qa.question for qa in asked}) == len(asked) <= 6
        for qa in asked:
            assert qa.kind == "yes_no" and qa.answer in ("yes", "no")
            color, shape, phrase, color2, shape2 = pattern.fullmatch(qa.question).groups()
            o = objects[color, shape]
            margin = m if qa.answer == "yes" else -m
            assert qa.form == ("position" if color2 is None else "relation")
            if color2 is None:
                holds = position_holds(position[phrase], o.x, o.y, margin)
                answers["position"].append(qa.answer)
            else:
                other = objects[color2, shape2]
                holds = relation_holds(relation[phrase], (o.x, o.y), (other.x, other.y), margin)
                answers["relation"].append(qa.answer)
            assert holds == (qa.answer == "yes"), qa
    for form, said in answers.items():
        assert len(said) > 200 and 0.45 < said.count("yes") / len(said) < 0.55, form
    scene = samples[1].scene
    assert place_questions(scene, random.Random(3), 4) == place_questions(scene, random.Random(3), 4)
    with pytest.raises(ValueError, match="at least one"):
        place_questions(scene, rng, 0)


def test_training_questions_never_name_a_held_out_composition():
    """Not even as a "no": "is there an orange circle?" -> "no" in training teaches that it never exists."""
    import re

    from emu3.datasets.shapes.captions import RELATION_PHRASES

    phrase_to_relation = {phrases[0]: r for r, phrases in RELATION_PHRASES.items()}
    relation_question = re.compile(r"is the \w+ (\w+) (.+) the \w+ (\w+)\?")

    def names_held_out(question: str) -> bool:
        if any(f"{c} {s}" in question for c, s in HELD_OUT_PAIRS):
            return True
        m = relation_question.fullmatch(question)
        return bool(m) and relation_held_out(m[1], phrase_to_relation[m[2]], m[3])

    rng = random.Random(2)
    asked = {"train": [], "heldout": []}
    for split in asked:
        for _ in range(400):
            scene = sample_captioned_scene(rng, split).scene
            asked[split] += [qa.question for qa in questions_for(scene, rng, 6, split)]
            asked[split] += [qa.question for qa in place_questions(scene, rng, 6, split)]
    assert not [q for q in asked["train"] if names_held_out(q)]
    assert [q for q in asked["heldout"] if names_held_out(q)]  # the check can fire
    assert any(relation_question.fullmatch(q) for q in asked["train"])  # relation questions are still asked
    with pytest.raises(ValueError, match="split"):
        questions_for(scene, rng, 1, "validation")


def test_videos_move_as_captioned_and_bounce_inside_the_picture():
    rng = random.Random(0)
    for i in range(40):
        video = sample_video(rng, 8, "heldout" if i % 4 == 0 else "train")
        scenes = video.scenes()  # validates: inside the picture, no overlap, colors
        assert len(scenes) == 8
        caption = video.caption()
        for m in video.movers:
            assert f"{m.obj.color} {m.obj.shape} moving {m.direction}" in caption
            track = video.tracks()[m.obj.color, m.obj.shape]
            first_step = track[1] - track[0]
            assert np.allclose(first_step, m.speed * np.array(DIRECTIONS[m.direction]))
        held = any((m.obj.color, m.obj.shape) in HELD_OUT_PAIRS for m in video.movers)
        assert held == (i % 4 == 0)
    frames = render_video(video, 32)
    assert len(frames) == 8 and frames[0].size == (32, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        sample_video(rng, 6)
    with pytest.raises(ValueError, match="inside the picture"):
        Mover(Obj("circle", "red", "large", 0.17, 0.5), "left", 0.05)
    mover = Mover(Obj("circle", "red", "small", 0.3, 0.3), "left", 0.05)
    with pytest.raises(ValueError, match="differ in color or shape"):
        Video("black", (mover, mover))


def test_write_dataset_is_deterministic_and_readable_by_training(tmp_path):
    from emu3.train.manifest import parse_record

    a = write_dataset(tmp_path / "a", n_images=4, n_vqa=3, n_place=2, n_videos=2, seed=5)
    b = write_dataset(tmp_path / "b", n_images=4, n_vqa=3, n_place=2, n_videos=2, seed=5)
    assert a.read_text() == b.read_text()
    lines = a.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    kinds = [sorted(r) for r in records]
    assert kinds == [["caption", "image"]] * 4 + [["image", "turns"]] * 5 + [["caption", "frames"]] * 2
    place_turns = [turn for r in records[7:9] for turn in r["turns"]]
    assert place_turns and all(t["question"].startswith("is the ") and t["answer"] in ("yes", "no")
                               for t in place_turns)
    without = write_dataset(tmp_path / "d", n_images=4, n_vqa=3, n_videos=2, seed=5)  # other records unchanged
    assert [json.loads(line) for line in without.read_text().splitlines()][:7] == records[:7]
    assert records[0]["image"] == "img/000001.png" and len(records[-1]["frames"]) == 8
    for path in [r["image"] for r in records if "image" in r] + records[-1]["frames"]:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    for i, line in enumerate(lines):
        parse_record(i + 1, line, a.parent)
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "a", n_images=1)
    with pytest.raises(ValueError, match="n_vqa"):
        write_dataset(tmp_path / "c", n_vqa=-1)
    with pytest.raises(ValueError, match="n_place"):
        write_dataset(tmp_path / "c", n_place=1.5)
