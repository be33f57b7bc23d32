"""Train the bundled Shapes-world model from nothing: data, vision tokenizer, compact vocabulary, LM.

    python scripts/train_shapes.py --work runs/shapes [--device cuda] [--install]

Stages (each is skipped when its output exists, and an interrupted training resumes from its last
checkpoint, so running the command again goes on where it stopped):
  1. data        `emu3.datasets.shapes.write_dataset` on the training compositions: captioned pictures,
                 pictures with 5 questions each and captioned 8-frame clips of moving objects (64x64)
  2. pictures    the data's pictures plus pictures and clips of the held-out compositions, captions
                 and questions dropped: what the vision tokenizer trains on. The tokenizer is the
                 world's picture codec (its target is PSNR on the world's pictures); one trained
                 without green squares cannot write one, which capped any LM at a quarter of the
                 held-out prompts. The LM never sees a held-out composition, in text or in pictures.
  3. vq          `emu3 train-vq --preset shapes --init` on 32x32 crops: a plain-autoencoder warm-up, then a
                 k-means codebook (8x8 grids of 1024 codes)
  4. merge       `emu3 merge-codes`: the codes of flat patches of one color encode as one canonical code
                 (emu3.train.code_merge), which removes tokenizer noise the LM would have to model
  5. base        a compact vocabulary (the 256 byte tokens + the corpus's BPE ranks + controls + codes)
                 and an untrained LM folder (`small` shapes, its vocabulary)
  6. prepare     `emu3 prepare` of the data with that tokenizer and the merged vision tokenizer (clips as
                 frames 0, 2, 4, 6, one image block each)
  7. decoder     `emu3 train-vq --decoder-only` of the merged tokenizer on whole pictures: sharper pictures
                 from the same codes (the LM's data do not change)
 7b. grow        the same with `--add-res-blocks 1` (emu3.train.deepen): one more residual block per
                 level, new blocks starting as the identity, so the codes still do not change; the
                 decoder side is stored in bf16 (`--export-dtype bf16`) and the encoder in fp16
                 (`--export-encoder-dtype fp16`: moves about 1 code in 3000) to keep the bundle under 25 MB
  8. train       `emu3 train --model base --init` (text-to-image + VQA + video, from scratch), bf16 export
  9. more data   fresh scenes of the training compositions (another seed), prepared like stage 6
 10. continue    `emu3 train` from the previous LM on every prepared set so far: the LM had begun to learn
                 its training scenes by heart (text-to-image loss 0.83 on them, 0.94 on fresh scenes).
                 Stages 9 and 10 repeat once per round (`--more-steps 7000 6000`: two rounds)
10b. deepen      `emu3 train --add-layers` (emu3.train.deepen) on every prepared set: the LM grows new layers
                 that start as the identity (copies of the layer before, their output projections zero),
                 so it goes on from what it knows with more capacity. It repeats once per round
                 (`--deepen-steps 7000 3000`: two rounds of 2 layers, 4 -> 6 -> 8; none: no such stage)
10c. video       8000 fresh clips of the training compositions (seed + 11), prepared like stage 6
10d. polish      `emu3 train` from the deepened LM on every prepared set and the clips (drawn twice per
                 epoch) at a lower learning rate (5000 steps, 3e-4 cosine to 3e-5): lower loss on every
                 part, better answers, continued objects nearer where they belong. It repeats once per
                 round (`--polish-steps 5000 9000`; none: no such stage); rounds after the first add
                 fresh scenes (`--polish-scenes`, seed + 40) and draw the clips 3 times (`--video-weight 2 3`)
10e. ground      fresh scenes (`--ground-scenes`, seed + 50) of which 5000 pictures carry yes/no questions about
                 where their objects are, as many "yes" as "no" per form (`place_questions`); `emu3 train` from
                 the polished LM on them alone, 1500 steps at 1e-4 cosine to 1e-5: the ordinary mix asks few
                 such questions, mostly "no", and the LM answered "no" to all. It repeats once per round
                 (`--ground-steps 1500 1500 700`; none: no such stage), each round from the one before on
                 fresh scenes of its own (four counts per round; seed + 51 for round 2, ...); round 2 gives
                 twice as many pictures place questions (10000), round 3 gives 4000 of its scenes to clips
 11. bundle      the LM beside that tokenizer; eval: ShapesEval on held-out compositions
With `--install`, the bundle is copied to `src/emu3/assets/shapes/{model,vision-tokenizer}`.
The official BPE ranks file (`emu3.tiktoken`) comes from `--bpe` (default: the shared fixture).

The defaults take about sixteen hours on a 2-core CPU (tokenizer 70 min, decoder 16 min,
grown decoder 74 min, LM 96 min; round 1: more data 10 min, continue 85 min; round 2: more data 12 min,
continue 78 min; deepen 74 + 50 min; clips 6 min; polish 68 min; fresh scenes 11 min; polish round 2
76 min; ground 36 + 49 min, on another 2-core CPU, and round 3 100 min on a slower one, its data
prepared beside other work; figures in benchmarks/RESULTS.md; the stages before
deepen were timed with gradient checkpointing, which the recipe now turns off: same math, less work).
Every stage but polish round 2 ran in fp32; that one ran with `--dtype bf16` (in fp32 it takes about
2 h), which on a CPU with AMX (`lscpu | grep amx`) trains about 1.6-1.8x faster (bf16 autocast with
fp32 weights; benchmarks/RESULTS.md, "bf16 on a CPU"); on a CPU without AMX, bf16 is far slower.
On a GPU, raise the step counts (`--device cuda --vq-steps 40000 --lm-steps 40000 --more-steps 20000
20000 --deepen-steps 20000 10000 --polish-steps 10000 20000 --lm-batch 64`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from emu3.cli import whole_number
from emu3.defaults import GUIDANCE_SCALE

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BPE = REPO.parent / "shared" / "fixtures" / "emu3-tiny-original" / "Emu3-tiny" / "emu3.tiktoken"
ASSETS = REPO / "src" / "emu3" / "assets" / "shapes"
# IMAGES VQA PLACE CLIPS of each default ground round
GROUND_SCENES = [12000, 4000, 5000, 1000, 8000, 3000, 10000, 1000, 6000, 3000, 8000, 4000]


count = whole_number("a count", 0)  # pictures, clips, steps
positive = whole_number("a positive count", 1)  # a batch, a width, layers, the steps of a round


def emu3(*args: str) -> None:
    """Run one `emu3` command of this project, failing loudly."""
    cmd = [sys.executable, "-m", "emu3", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def write_training_data(folder: Path, images: int, vqa: int, videos: int, seed: int, place: int = 0) -> Path:
    """Scenes of the training compositions (captioned pictures, pictures with 5 questions, `place` pictures
    with 5 yes/no questions about where their objects are, clips) in `folder`."""
    from emu3.datasets.shapes import write_dataset

    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        write_dataset(folder, n_images=images, n_vqa=vqa, n_place=place, n_videos=videos, seed=seed, image_size=64,
                      questions_per_image=5)
    return manifest


def stage_data(work: Path, a: argparse.Namespace) -> Path:
    return write_training_data(work / "data", a.images, a.vqa, a.videos, a.seed)


def stage_pictures(work: Path, data: Path, a: argparse.Namespace) -> Path:
    """A manifest of the data's pictures and clips plus held-out ones, paths relative to its folder."""
    from emu3.datasets.shapes import write_dataset
    from emu3.train.atomic import write_file

    manifest = work / "pictures" / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    held = work / "pictures-heldout"
    if not (held / "manifest.jsonl").is_file():
        write_dataset(held, n_images=a.heldout_pictures, n_videos=a.heldout_clips, seed=a.seed + 1, image_size=64,
                      split="heldout", overwrite=True)
    lines = []
    for source in (data, held / "manifest.jsonl"):
        prefix = f"../{source.parent.name}/"
        for line in source.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            lines.append({"image": prefix + record["image"]} if "image" in record
                         else {"frames": [prefix + f for f in record["frames"]]})
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_file(manifest, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8"))
    return manifest


def resume(output: Path) -> list[str]:
    """`--resume` when a training run in `output` left a complete checkpoint: an interrupted stage goes on."""
    from emu3.train.state import latest

    return ["--resume"] if latest(output) is not None else []


def stage_vq(work: Path, pictures: Path, a: argparse.Namespace) -> Path:
    out = work / "vq" / "export" / "vision-tokenizer"
    if not out.is_dir():
        emu3("train-vq", "--data", str(pictures), "--preset", "shapes", "--init", "--resolution", "64",
             "--crop", "32", "--autoencoder-steps", str(a.vq_autoencoder_steps), "--recon-loss", "l2",
             "--micro-batch-size", str(a.vq_batch), "--max-steps", str(a.vq_steps), "--lr", "4e-3", "--min-lr", "2e-4",
             "--betas", "0.9", "0.99", "--warmup-steps", "30", "--restart-dead-codes", "50", "--save-every", "500",
             "--log-every", "20", "--device", a.device, "--dtype", a.dtype, *resume(work / "vq"),
             "-o", str(work / "vq"), "--quiet")
    return out


def corpus(manifest: Path) -> list[str]:
    """Every caption, question and answer of the manifest (the texts the compact table must hold)."""
    texts = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        texts += [record["caption"]] if "caption" in record else []
        texts += [t for turn in record.get("turns", []) for t in (turn["question"], turn["answer"])]
    return texts


def stage_base(work: Path, manifest: Path, vq_dir: Path, a: argparse.Namespace) -> Path:
    from emu3 import checkpoint
    from emu3.compact_vocab import CompactTokenizer
    from emu3.config import lm_preset
    from emu3.model import Transformer
    from emu3.prompting import SYSTEM_PROMPT
    from emu3.tokenizer import Tokenizer

    base = work / "base"
    if (base / "config.json").is_file():
        return base
    staging = work / "bpe"
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.bpe, staging / "emu3.tiktoken")
    markers = ["<|image token|>", "<|image start|>", "<|image end|>"]
    (staging / "emu3_vision_tokens.txt").write_text("\n".join(markers) + "\n", encoding="utf-8")
    codebook = checkpoint.load_vision_tokenizer(vq_dir)[0].config.codebook_size
    tok = CompactTokenizer.build(Tokenizer.from_dir(staging), corpus(manifest) + [SYSTEM_PROMPT], codebook)
    cfg = lm_preset("small", vocab_size=tok.vocab_size, pad_token_id=tok.vocab.pad, max_position_embeddings=2048,
                    num_layers=a.layers, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                    image_area=64 * 64)
    with torch.device("meta"):
        lm = Transformer(cfg)
    lm.to_empty(device="cpu")
    lm.init_weights(0.02, torch.Generator().manual_seed(a.seed))
    checkpoint.save_lm(lm, base)
    tok.save(base, a.bpe)
    print(f"compact vocabulary: {len(tok.ranks)} text ids, {tok.vocab_size} in all", flush=True)
    return base


def stage_prepare(work: Path, manifest: Path, base: Path, vq_dir: Path, a: argparse.Namespace,
                  name: str = "prepared") -> Path:
    out = work / name
    if not (out / "summary.json").is_file():
        emu3("prepare", str(manifest), "-o", str(out), "--model", str(base), "--vision-tokenizer", str(vq_dir),
             "--video-mode", "frames", "--frame-stride", "2", "--max-frames", "4", "--device", a.device, "--quiet")
    return out


def train_lm(out: Path, model: Path, data: list[Path | str], steps: int, lr: str, a: argparse.Namespace,
             *extra: str, min_lr: str = "1e-4", warmup: int = 100) -> Path:
    """`emu3 train` of the LM folder `model` on `data` (prepared folders, or "DIR:WEIGHT") into `out`
    (resumed when interrupted); its export. The learning rate warms up to `lr` in `warmup` steps, then
    falls to `min_lr` on a cosine."""
    if not (out / "export" / "model" / "config.json").is_file():
        emu3("train", "--model", str(model), *extra, "--data", *map(str, data), "-o", str(out),
             "--max-steps", str(steps), "--micro-batch-size", str(a.lm_batch), "--grad-accum", "1",
             "--lr", lr, "--min-lr", min_lr, "--warmup-steps", str(warmup), "--null-prompt-prob", "0.1",
             "--save-every", "200", "--log-every", "10", "--export-dtype", "bf16", "--no-gradient-checkpointing",
             "--device", a.device, "--dtype", a.dtype, *resume(out), "--quiet")
    return out / "export"


def stage_train(work: Path, base: Path, data: Path, a: argparse.Namespace) -> Path:
    """Train the LM of folder `base` on `data` from scratch."""
    return train_lm(work / "lm", base, [data], a.lm_steps, "2e-3", a, "--init")


def stage_more_data(work: Path, round_: int, a: argparse.Namespace) -> Path:
    """Fresh scenes of the training compositions for continue round `round_` (1, 2, ...): folder
    `data{round_ + 1}`, seed + 1 + round_ (seed + 1 drew the held-out pictures)."""
    i = round_ - 1
    return write_training_data(work / f"data{round_ + 1}", a.more_images[i], a.more_vqa[i], a.more_videos[i],
                               a.seed + 1 + round_)


def round_folder(work: Path, name: str, round_: int) -> Path:
    """The folder of round `round_` (1, 2, ...) of a repeated stage: `name`, then `name2`, `name3`, ..."""
    return work / (name if round_ == 1 else f"{name}{round_}")


def stage_continue(work: Path, round_: int, lm_export: Path, data: list[Path], a: argparse.Namespace) -> Path:
    """Go on training the LM of `lm_export` on all of `data` with a fresh, lower learning-rate schedule."""
    out = round_folder(work, "lm-more", round_)
    return train_lm(out, lm_export / "model", data, a.more_steps[round_ - 1], "1e-3", a)


def stage_deepen(work: Path, round_: int, lm_export: Path, data: list[Path], a: argparse.Namespace) -> Path:
    """A deeper LM: `--deepen-layers` identity layers added to the LM of `lm_export`, trained on all of `data`
    (deepen round `round_`, 1, 2, ...). Its folder records what it grew from; a run asking for another
    source (a new continue round, another layer count) stops instead of shipping the old one."""
    out = record_source(round_folder(work, "lm-deeper", round_),
                        {"model": str(lm_export / "model"), "layers": a.deepen_layers, "data": [str(d) for d in data]})
    return train_lm(out, lm_export / "model", data, a.deepen_steps[round_ - 1], a.deepen_lr, a,
                    "--add-layers", str(a.deepen_layers))


def stage_video(work: Path, a: argparse.Namespace) -> Path | None:
    """Clips only (`--video-clips`, seed + 11: clear of the continue rounds' seeds), for the polish stage:
    the LM learnt little continuation from the few clips among the other sets (direction 0.05)."""
    if not a.video_clips:
        return None
    return write_training_data(work / "data-video", 0, 0, a.video_clips, a.seed + 11)


def stage_polish_data(work: Path, a: argparse.Namespace) -> Path | None:
    """Fresh scenes of the training compositions (`--polish-scenes`, seed + 40) for the polish rounds
    after the first; None when there is one round or none."""
    if len(a.polish_steps) < 2:
        return None
    return write_training_data(work / "data-polish", *a.polish_scenes, a.seed + 40)


def stage_polish(work: Path, round_: int, lm_export: Path, data: list[Path], video: Path | None,
                 a: argparse.Namespace) -> Path:
    """Polish round `round_` (1, 2, ...), the last LM stages: `--polish-steps` more on all of `data` and the
    prepared clips `video` (drawn `--video-weight` times per epoch) at a lower learning rate (`--polish-lr`
    cosine to `--polish-min-lr`; warm-up 50 steps, 100 after the first round), which lowers the loss the
    deepen stage's rates left and teaches continuation."""
    i = round_ - 1
    sets = [*map(str, data), *([f"{video}:{a.video_weight[i]:g}"] if video else [])]
    source = {"model": str(lm_export / "model"), "data": sets, **({"scenes": a.polish_scenes} if round_ > 1 else {})}
    out = record_source(round_folder(work, "lm-polish", round_), source)
    return train_lm(out, lm_export / "model", sets, a.polish_steps[i], a.polish_lr, a, min_lr=a.polish_min_lr,
                    warmup=50 if round_ == 1 else 100)


def stage_ground(work: Path, round_: int, lm_export: Path, base: Path, vq_dir: Path, a: argparse.Namespace) -> Path:
    """Ground round `round_` (1, 2, ...), the last LM stages: `--ground-steps` on fresh scenes of its own
    (`--ground-scenes`, four counts per round, seed + 49 + round) in which some pictures carry yes/no
    questions about where their objects are, as many "yes" as "no" per form
    (`emu3.datasets.shapes.place_questions`), at a low learning rate (`--ground-lr` cosine to a tenth of it,
    50 warm-up steps). The ordinary question mix asks few of them, mostly "no", and the LM had learnt to
    answer "no" to nearly all."""
    scenes = a.ground_scenes[round_ - 1]
    images, vqa, place, clips = scenes
    data = write_training_data(round_folder(work, "data-ground", round_), images, vqa, clips, a.seed + 49 + round_,
                               place=place)
    prepared = round_folder(work, "prepared-ground", round_).name
    sets = [str(stage_prepare(work, data, base, vq_dir, a, name=prepared))]
    out = record_source(round_folder(work, "lm-ground", round_),
                        {"model": str(lm_export / "model"), "data": sets, "scenes": scenes})
    return train_lm(out, lm_export / "model", sets, a.ground_steps[round_ - 1], a.ground_lr, a,
                    min_lr=f"{float(a.ground_lr) / 10:g}", warmup=50)


def record_source(out: Path, source: dict) -> Path:
    """`out`, a stage's folder, with `source.json` recording what the stage starts from. When an earlier run
    of the stage started from something else (a new round before it, other settings), stop rather than go
    on from, or ship, a model that no longer follows from the stages before."""
    record = out / "source.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != source:
        sys.exit(f"{out} was trained from {record.read_text(encoding='utf-8').strip()}, not {json.dumps(source)}: "
                 "remove that folder to train that stage again")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(source) + "\n", encoding="utf-8")
    return out


def stage_decoder(work: Path, pictures: Path, vq_dir: Path, a: argparse.Namespace) -> Path:
    """Fine-tune the tokenizer's decoder alone on whole pictures: the codes (and the LM's data) do not change."""
    out = work / "vq-decoder"
    if not (out / "export" / "vision-tokenizer").is_dir():
        emu3("train-vq", "--data", str(pictures), "--vision-tokenizer", str(vq_dir), "--decoder-only",
             "--resolution", "64", "--recon-loss", "l2", "--micro-batch-size", "8", "--max-steps", str(a.decoder_steps),
             "--lr", "1e-3", "--min-lr", "1e-4", "--betas", "0.9", "0.99", "--warmup-steps", "30",
             "--save-every", "500", "--log-every", "20", "--device", a.device, "--dtype", a.dtype, *resume(out),
             "-o", str(out), "--quiet")
    return out / "export" / "vision-tokenizer"


def stage_grow(work: Path, pictures: Path, vq_dir: Path, a: argparse.Namespace) -> Path:
    """A deeper decoder for the same codes: `--add-res-blocks` identity blocks, then decoder-only training.
    Its folder records its source and settings; a run asking for others stops instead of shipping the old one."""
    if not a.grow_steps:
        return vq_dir
    out = record_source(work / "vq-grown", {"vision_tokenizer": str(vq_dir), "blocks": a.grow_blocks,
                                            "export_dtype": "bf16", "export_encoder_dtype": "fp16"})
    if not (out / "export" / "vision-tokenizer").is_dir():
        emu3("train-vq", "--data", str(pictures), "--vision-tokenizer", str(vq_dir), "--decoder-only",
             "--add-res-blocks", str(a.grow_blocks), "--export-dtype", "bf16", "--export-encoder-dtype", "fp16",
             "--resolution", "64",
             "--recon-loss", "l2", "--micro-batch-size", str(a.grow_batch), "--max-steps", str(a.grow_steps),
             "--lr", "3e-4", "--min-lr", "3e-5", "--betas", "0.9", "0.99", "--warmup-steps", "30",
             "--save-every", "500", "--log-every", "20", "--device", a.device, "--dtype", a.dtype, *resume(out),
             "-o", str(out), "--quiet")
    return out / "export" / "vision-tokenizer"


def stage_merge(work: Path, manifest: Path, vq_dir: Path, a: argparse.Namespace) -> Path:
    out = work / "vq-merged"
    if not (out / "config.json").is_file():
        emu3("merge-codes", "--vision-tokenizer", str(vq_dir), "--data", str(manifest), "-o", str(out),
             "--tol", str(a.merge_tol), "--device", a.device)
    return out


def stage_bundle(work: Path, lm_export: Path, vq_dir: Path) -> Path:
    """The shippable pair: the trained LM beside the decoder-tuned vision tokenizer (built again when the
    LM or the tokenizer it was built from is not the one given, as after adding a continue round)."""
    bundle = work / "bundle"
    source = json.dumps({"model": str(lm_export / "model"), "vision-tokenizer": str(vq_dir)})
    built = bundle / "source.json"
    if not (bundle / "model" / "config.json").is_file() or not built.is_file() or built.read_text() != source:
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(lm_export / "model", bundle / "model")
        shutil.copytree(vq_dir, bundle / "vision-tokenizer")
        built.write_text(source, encoding="utf-8")
    return bundle


def stage_eval(export: Path, a: argparse.Namespace) -> dict:
    from emu3.eval.cli import evaluate_model
    from emu3.eval.shapes import format_report
    from emu3.pipelines import Emu3

    m = Emu3.load(export / "model", device=a.device)
    start = time.perf_counter()
    report = evaluate_model(m, n_prompts=a.eval_prompts, n_questions=a.eval_questions, n_videos=a.eval_videos,
                            seed=0, cfg=a.cfg)
    print(format_report(report), flush=True)
    return {"eval_seconds": time.perf_counter() - start, **report.to_dict()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/shapes"), help="working folder (resumable)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="compute dtype of every training stage (auto: bf16 on a GPU, fp32 on a CPU; bf16 trains "
                        "about 1.6-1.8x faster on a CPU with AMX)")
    p.add_argument("--bpe", type=Path, default=DEFAULT_BPE, help="the official emu3.tiktoken")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=count, default=10000, help="captioned training pictures")
    p.add_argument("--vqa", type=count, default=6000, help="training pictures with 5 questions each")
    p.add_argument("--videos", type=count, default=1500, help="captioned 8-frame clips (trained on frames 0, 2, 4, 6)")
    p.add_argument("--heldout-pictures", type=count, default=4000,
                   help="pictures of held-out compositions for the vision tokenizer only (0: none)")
    p.add_argument("--heldout-clips", type=count, default=300, help="the same, clips")
    p.add_argument("--vq-steps", type=count, default=12000)
    p.add_argument("--vq-batch", type=positive, default=16, help="32x32 crops per VQ step")
    p.add_argument("--vq-autoencoder-steps", type=count, default=300, help="plain-autoencoder steps before k-means")
    p.add_argument("--merge-tol", type=float, default=0.07, help="emu3 merge-codes --tol")
    p.add_argument("--decoder-steps", type=count, default=2000, help="decoder-only fine-tuning steps of 8 pictures")
    p.add_argument("--grow-blocks", type=count, default=1, help="residual blocks per level the grow stage adds")
    p.add_argument("--grow-steps", type=count, default=4000,
                   help="decoder-only steps after growing (0: no grow stage)")
    p.add_argument("--grow-batch", type=positive, default=16, help="whole pictures per grow step")
    p.add_argument("--layers", type=positive, default=4, help="LM layers")
    p.add_argument("--hidden", type=positive, default=256, help="LM width (8 heads, 2 kv heads; MLP 3x as wide)")
    p.add_argument("--lm-steps", type=count, default=9000, help="LM steps from scratch")
    p.add_argument("--lm-batch", type=positive, default=16)
    p.add_argument("--more-steps", type=positive, nargs="*", default=[7000, 6000],
                   help="LM steps of each continue round (none: no such stage)")
    p.add_argument("--more-images", type=count, nargs="+", default=[20000, 30000],
                   help="captioned pictures of each round's more-data stage")
    p.add_argument("--more-vqa", type=count, nargs="+", default=[8000, 10000],
                   help="pictures with 5 questions of each round's more-data stage")
    p.add_argument("--more-videos", type=count, nargs="+", default=[1000, 1000],
                   help="clips of each round's more-data stage")
    p.add_argument("--deepen-layers", type=positive, default=2, help="decoder layers each deepen round adds to the LM")
    p.add_argument("--deepen-steps", type=positive, nargs="*", default=[7000, 3000],
                   help="steps of each deepen round (none: no such stage)")
    p.add_argument("--deepen-lr", default="1e-3", help="peak learning rate of the deepen stage")
    p.add_argument("--polish-steps", type=positive, nargs="*", default=[5000, 9000],
                   help="steps of each polish round (none: no such stage)")
    p.add_argument("--polish-scenes", type=count, nargs=3, default=[24000, 8000, 3000],
                   metavar=("IMAGES", "VQA", "CLIPS"),
                   help="fresh scenes (one more prepared set) that the polish rounds after the first add")
    p.add_argument("--polish-lr", default="3e-4", help="peak learning rate of every polish round")
    p.add_argument("--polish-min-lr", default="3e-5", help="learning rate at every polish round's last step")
    p.add_argument("--video-clips", type=count, default=8000, help="clips of the polish stage's video set (0: none)")
    p.add_argument("--video-weight", type=float, nargs="+",
                   help="times the video set is drawn per epoch: one value per polish round, or one for all "
                        "(default: 2 in round 1, 3 after)")
    p.add_argument("--ground-steps", type=positive, nargs="*", default=[1500, 1500, 700],
                   help="steps of each ground round, on fresh scenes with place questions (none: no such stage)")
    p.add_argument("--ground-scenes", type=count, nargs="+", metavar="N",
                   help="fresh scenes of each ground round, four counts per round: IMAGES VQA PLACE CLIPS (PLACE "
                        "pictures carry 5 place questions each; default: 12000 4000 5000 1000 in round 1, "
                        "8000 3000 10000 1000 in round 2, 6000 3000 8000 4000 in round 3)")
    p.add_argument("--ground-lr", default="1e-4", help="peak learning rate of each ground round")
    p.add_argument("--cfg", type=float, default=GUIDANCE_SCALE, help="classifier-free guidance scale at evaluation")
    p.add_argument("--eval-prompts", type=count, default=100)
    p.add_argument("--eval-questions", type=count, default=200)
    p.add_argument("--eval-videos", type=count, default=20)
    p.add_argument("--install", action="store_true", help="copy the export into the package's assets")
    a = p.parse_args()
    rounds = len(a.more_steps)
    if any(len(counts) != rounds for counts in (a.more_images, a.more_vqa, a.more_videos)):
        p.error(f"--more-images, --more-vqa and --more-videos need one value per continue round ({rounds})")
    polish_rounds = len(a.polish_steps)
    a.video_weight = a.video_weight or [2.0] + [3.0] * (polish_rounds - 1)
    if len(a.video_weight) == 1:
        a.video_weight = a.video_weight * polish_rounds
    if len(a.video_weight) != polish_rounds or not all(w > 0 for w in a.video_weight):
        p.error(f"--video-weight must be positive: one value, or one per polish round ({polish_rounds})")
    if polish_rounds > 1 and not sum(a.polish_scenes):
        p.error("--polish-scenes: not all 0 when there is more than one polish round")
    ground_rounds = len(a.ground_steps)
    counts = a.ground_scenes or GROUND_SCENES[:4 * ground_rounds]
    a.ground_scenes = [counts[i:i + 4] for i in range(0, len(counts), 4)]  # IMAGES VQA PLACE CLIPS per round
    if len(counts) != 4 * ground_rounds or not all(place for _, _, place, _ in a.ground_scenes):
        p.error(f"--ground-scenes needs four counts per ground round ({ground_rounds}), "
                "IMAGES VQA PLACE CLIPS, with some PLACE pictures in each")
    a.work.mkdir(parents=True, exist_ok=True)
    data = stage_data(a.work, a)
    pictures = stage_pictures(a.work, data, a)
    merged = stage_merge(a.work, data, stage_vq(a.work, pictures, a), a)
    base = stage_base(a.work, data, merged, a)
    tokenizer = stage_grow(a.work, pictures, stage_decoder(a.work, pictures, merged, a), a)
    prepared = stage_prepare(a.work, data, base, merged, a)
    lm_export = stage_train(a.work, base, prepared, a)
    sets = [prepared]
    for round_ in range(1, rounds + 1):
        sets.append(stage_prepare(a.work, stage_more_data(a.work, round_, a), base, merged, a,
                                  name=f"prepared{round_ + 1}"))
        lm_export = stage_continue(a.work, round_, lm_export, sets, a)
    for round_ in range(1, len(a.deepen_steps) + 1):
        lm_export = stage_deepen(a.work, round_, lm_export, sets, a)
    clips = stage_video(a.work, a)
    video = stage_prepare(a.work, clips, base, merged, a, name="prepared-video") if clips else None
    fresh = stage_polish_data(a.work, a)
    fresh_sets = [stage_prepare(a.work, fresh, base, merged, a, name="prepared-polish")] if fresh else []
    for round_ in range(1, len(a.polish_steps) + 1):
        lm_export = stage_polish(a.work, round_, lm_export, sets + (fresh_sets if round_ > 1 else []), video, a)
    for round_ in range(1, len(a.ground_steps) + 1):
        lm_export = stage_ground(a.work, round_, lm_export, base, merged, a)
    export = stage_bundle(a.work, lm_export, tokenizer)
    figures = stage_eval(export, a)
    print(json.dumps(figures, indent=2), flush=True)
    (a.work / "figures.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if a.install:
        for name in ("model", "vision-tokenizer"):
            shutil.rmtree(ASSETS / name, ignore_errors=True)
            shutil.copytree(export / name, ASSETS / name, symlinks=False)


if __name__ == "__main__":
    main()
