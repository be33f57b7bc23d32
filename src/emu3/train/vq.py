"""`emu3 train-vq`: training or fine-tuning the vision tokenizer (the VQ autoencoder).

The training forward is written here from the tokenizer's own pieces (`encoder.spatial/temporal`,
`quant_conv`, `quantize`, `post_quant_conv`, `decoder.temporal/spatial`): the nearest codes are
picked without gradient and the decoder sees `z + sg(zq - z)` (straight-through estimation), so
the reconstruction gradient reaches the encoder. Loss per sample: pixel L1 (or L2) + `codebook_weight`
* ||sg(z) - zq||^2 + `commitment_beta` * ||z - sg(zq)||^2 (+ `perceptual_weight` * LPIPS, only when
the lpips package is installed and the weight is set). Images train as the official 4-frame static
clip (decoded frame 0); `num_frames` > 1 trains on clips. Logged: the loss terms, PSNR, and codebook
usage (share of codes hit in the step and since the run started) and perplexity. BatchNorm keeps
the checkpoint's statistics unless `train_batchnorm` (the decoder's alone with `decoder_only`). With
`restart_dead_codes`, codes that no latent picked for that many micro-batches are moved onto random latents of the batch (training from scratch
collapses onto a few codes without it; the restarts are per process, so use them on one process). With
`autoencoder_steps` N, steps before N train a plain autoencoder (the decoder sees the latents) and
step N first sets the codebook to k-means centres of latents of up to 1024 samples (one process);
with `crop`, samples are random crops of the resolution square. `decoder_only` trains the decoder
side alone, so the codes of data already tokenized (and a language model trained on them) stay
valid; it keeps the tokenizer's code aliases (`emu3 merge-codes`), which other training drops; with
`add_res_blocks` the loaded tokenizer first grows identity residual blocks (emu3.train.deepen). No
adversarial term is implemented. The result is saved in the official VQ folder layout.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from emu3 import checkpoint
from emu3.config import vq_preset
from emu3.train import distributed, export
from emu3.train.batching import Layout, MicroBatch, Plan
from emu3.train.config import VQTrainConfig
from emu3.train.deepen import deepen
from emu3.train.kmeans import kmeans
from emu3.train.loop import StepCallback, check_output, fit, total_steps
from emu3.train.manifest import Record, RecordError, parse_record, read_lines
from emu3.vision import ImageProcessor, VisionTokenizer, load_frames, load_image, to_rgb


def _flat_latents(z: torch.Tensor) -> torch.Tensor:
    """(B, t, E, h, w) latents -> (B * t * h * w, E), one row per latent vector."""
    return z.permute(0, 1, 3, 4, 2).reshape(-1, z.shape[2])


def _default_counters(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
    """Checkpoints written before the code counters were saved resume with every code counted as just
    hit, and none as seen."""
    state.setdefault(prefix + "idle", torch.zeros_like(module.idle))
    state.setdefault(prefix + "seen", torch.zeros_like(module.seen))


class VQLoss(nn.Module):
    """Wraps the tokenizer; `forward(pixels)` -> (summed loss, per-sample stats, codes)."""

    def __init__(self, vq: VisionTokenizer, cfg: VQTrainConfig) -> None:
        super().__init__()
        self.vq, self.cfg = vq, cfg
        self._lpips = None
        # micro-batches since each code was hit, and whether it was hit in this run: buffers, so checkpoints
        # carry them and a resume restarts the same codes and logs the same usage; `export` keeps only the
        # `vq.` weights
        self.register_buffer("idle", torch.zeros(vq.config.codebook_size, dtype=torch.long))
        self.register_buffer("seen", torch.zeros(vq.config.codebook_size, dtype=torch.bool))
        self.register_load_state_dict_pre_hook(_default_counters)
        if cfg.perceptual_weight > 0:
            try:
                import lpips
            except ImportError:
                raise ValueError("perceptual_weight > 0 needs the lpips package (pip install lpips)") from None
            object.__setattr__(self, "_lpips", lpips.LPIPS(net="vgg").eval().requires_grad_(False))

    def train(self, mode: bool = True) -> VQLoss:
        """Train mode, except for the BatchNorm layers whose statistics stay as loaded: all of them unless
        `train_batchnorm`, and with `decoder_only` those of the encoder side (which would move codes)."""
        super().train(mode)
        for name, m in self.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (self.cfg.train_batchnorm and (
                    not self.cfg.decoder_only or name.removeprefix("vq.").startswith(export.VQ_DECODER_SIDE))):
                m.eval()
        return self

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images or (B, T, 3, H, W) clips -> pre-quantization latents (B, t, E, h, w)."""
        return self.vq.latents(pixels)

    def decode(self, zq: torch.Tensor, image: bool) -> torch.Tensor:
        """Codebook vectors (B, t, E, h, w) -> (B, 3, H, W) frame 0 for images, (B, 4t, 3, H, W) for clips."""
        return self.vq.decode_vectors(zq, image)

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor) -> None:
        """Codes idle for `restart_dead_codes` micro-batches are moved onto random latents of this batch."""
        dead = (self.idle >= self.cfg.restart_dead_codes).nonzero().flatten()
        if len(dead):
            flat = _flat_latents(z.detach()).float()
            pick = torch.randint(len(flat), (len(dead),), device=flat.device)
            weight = self.vq.quantize.embedding.weight
            weight[dead.to(weight.device)] = flat[pick].to(weight.dtype)
            self.idle[dead] = 0

    @torch.no_grad()
    def init_codebook(self, batches: list[torch.Tensor], seed: int) -> None:
        """Set the codebook to k-means centres of the latents of `batches` (pixel tensors); with fewer
        latents than codes, the codes left over sit on randomly chosen latents plus a little noise."""
        flat = torch.cat([_flat_latents(self.encode(b)) for b in batches])
        weight = self.vq.quantize.embedding.weight
        g = torch.Generator().manual_seed(seed)
        centres = kmeans(flat, min(len(weight), len(flat)), generator=g)
        if len(centres) < len(weight):  # fewer latents than codes: the rest sit on jittered latents
            extra = flat[torch.randint(len(flat), (len(weight) - len(centres),), generator=g)].float()
            centres = torch.cat([centres, extra + 1e-3 * extra.std() * torch.randn(extra.shape, generator=g)])
        weight.copy_(centres.to(weight.device, weight.dtype))
        self.idle.zero_()

    def forward(self, pixels: torch.Tensor, quantize: bool = True
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """With `quantize` False the decoder sees the latents themselves (the autoencoder warm-up)."""
        z = self.encode(pixels)  # (B, t, E, h, w)
        if self.training and self.cfg.restart_dead_codes and quantize:
            self._restart_dead_codes(z)
        with torch.no_grad():
            codes = self.vq.quantize(z)  # (B, t, h, w)
            if self.training and quantize:
                hit = torch.bincount(codes.flatten(), minlength=len(self.idle)) > 0
                self.idle.copy_(torch.where(hit, 0, self.idle + 1))
        zq = self.vq.quantize.lookup(codes).to(z.dtype)  # (B, t, E, h, w)
        dims = tuple(range(1, z.ndim))
        codebook = (zq - z.detach()).float().pow(2).mean(dims)  # (B,)
        commit = (z - zq.detach()).float().pow(2).mean(dims)  # (B,)
        recon = self.decode(z + (zq - z).detach() if quantize else z, image=pixels.ndim == 4).float()
        diff = recon - pixels.float()
        pix_dims = tuple(range(1, diff.ndim))
        pixel = diff.abs().mean(pix_dims) if self.cfg.recon_loss == "l1" else diff.pow(2).mean(pix_dims)  # (B,)
        loss = pixel + (self.cfg.codebook_weight * codebook + self.cfg.commitment_beta * commit if quantize else 0)
        if self._lpips is not None:
            frames, target = recon.reshape(-1, *recon.shape[-3:]), pixels.float().reshape(-1, *pixels.shape[-3:])
            lp = self._lpips.to(recon.device)(frames, target).reshape(pixels.shape[0], -1).mean(1)  # (B,)
            loss = loss + self.cfg.perceptual_weight * lp
        mse = ((recon.detach().clamp(-1, 1) - pixels.float()) / 2).pow(2).mean(pix_dims)  # on the [0, 1] scale
        psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
        stats = {"recon": pixel.detach().sum(), "codebook": codebook.detach().sum(), "commit": commit.detach().sum(),
                 "psnr": psnr.sum()}
        return loss.sum(), stats, codes


class Media:
    """Training samples (crops of images or clips) read from manifest records."""

    def __init__(self, records: list[Record], processor: ImageProcessor, resolution: int, num_frames: int,
                 seed: int, crop: int = 0) -> None:
        self.records, self.processor, self.resolution = records, processor, resolution
        self.num_frames, self.seed, self.crop = num_frames, seed, crop or resolution

    def _frames(self, record: Record) -> list[Image.Image]:
        if record.image is not None:
            return [load_image(record.image)]
        return [load_image(p) for p in record.frames] if record.frames else load_frames(record.video)

    def _crop(self, image: Image.Image, rng: np.random.Generator,
              box: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
        """Resize the short side to the resolution, then cut a `crop` square at `box` (drawn when None)."""
        r, c = self.resolution, self.crop
        scale = r / min(image.width, image.height)
        image = to_rgb(image).resize((max(r, round(image.width * scale)), max(r, round(image.height * scale))),
                                     Image.Resampling.BICUBIC)
        if box is None:
            box = (int(rng.integers(0, image.width - c + 1)), int(rng.integers(0, image.height - c + 1)))
        return image.crop((box[0], box[1], box[0] + c, box[1] + c)), box

    def pixels(self, index: int, step: int) -> torch.Tensor:
        """(3, C, C) for images (num_frames 1), (T, 3, C, C) for clips (C: the crop side); values in [-1, 1]."""
        record = self.records[index]
        rng = np.random.default_rng([self.seed, step, index])
        try:
            frames = self._frames(record)
        except (OSError, ValueError, ImportError) as exc:
            media = record.image or record.video or record.frames[0]
            raise ValueError(f"manifest line {record.line} ({media}): {exc}") from exc
        t = self.num_frames
        start = int(rng.integers(0, max(1, len(frames) - t + 1)))
        frames = frames[start:start + t]
        frames = frames + frames[-1:] * (t - len(frames))
        box = None
        out = []
        p = self.processor
        for frame in frames:
            crop, box = self._crop(frame, rng, box)
            x = np.asarray(crop, dtype=np.float32) * p.rescale_factor
            x = (x - np.asarray(p.image_mean, np.float32)) / np.asarray(p.image_std, np.float32)  # (R, R, 3)
            out.append(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))))
        return out[0] if t == 1 else torch.stack(out)


class VQTask:
    """The `loop.Task` of vision-tokenizer training."""

    kind = "vq"

    def __init__(self, module: nn.Module, media: Media, plan: Plan, cfg: VQTrainConfig, codebook_size: int,
                 device: torch.device) -> None:
        self.module, self.media, self.plan, self.cfg, self.device = module, media, plan, cfg, device
        self.codebook_size = codebook_size
        self._codebook_set_at = -1  # the step whose k-means initialisation has run

    def _pixels(self, indices, step: int) -> torch.Tensor:
        return torch.stack([self.media.pixels(int(i), step) for i in indices]).to(self.device)

    def _init_codebook(self, step: int) -> None:
        """k-means over latents of up to 1024 samples (the same ones on every process: seeded by the run)."""
        order = np.random.default_rng([self.cfg.seed, 7]).permutation(len(self.media.records))[:1024]
        size = self.cfg.micro_batch_size
        batches = [self._pixels(order[i:i + size], step) for i in range(0, len(order), size)]
        self.module.init_codebook(batches, self.cfg.seed)
        self._codebook_set_at = step

    def normalizer(self, step: int) -> float:
        return float(self.plan.layout.global_batch)

    def micro_loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        warmup = self.cfg.autoencoder_steps
        if warmup and batch.step == warmup and self._codebook_set_at != warmup:
            self._init_codebook(batch.step)
        loss, stats, codes = self.module(self._pixels(batch.indices, batch.step), quantize=batch.step >= warmup)
        hist = torch.bincount(codes.flatten(), minlength=self.codebook_size).double()
        return loss, {**stats, "samples": torch.tensor(float(len(batch.indices))),
                      "tokens": torch.tensor(float(codes.numel())), "hist": hist}

    def summarize(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(stats["samples"])
        hist = stats["hist"]
        seen = self.module.seen  # the codes hit since the run started, resumes included
        seen |= (hist > 0).to(seen.device)
        p = hist / hist.sum().clamp_min(1)
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
        return {"recon": float(stats["recon"]) / n, "codebook_loss": float(stats["codebook"]) / n,
                "commit_loss": float(stats["commit"]) / n, "psnr": float(stats["psnr"]) / n,
                "codebook_usage": float((hist > 0).sum()) / self.codebook_size,
                "codebook_usage_run": float(seen.sum()) / self.codebook_size, "perplexity": math.exp(entropy)}

    def fingerprint(self) -> dict[str, Any]:
        data = [str(Path(m).resolve()) for m in self.cfg.data]
        # one manifest stays a string, as before several were allowed: those runs still resume
        return {"data": data[0] if len(data) == 1 else data, "records": len(self.media.records),
                "global_batch": self.plan.layout.global_batch, "seed": self.cfg.seed,
                "resolution": self.cfg.resolution, "crop": self.cfg.crop, "num_frames": self.cfg.num_frames,
                "autoencoder_steps": self.cfg.autoencoder_steps,
                # only when on, so runs saved before it was recorded (full training) still resume
                **({"decoder_only": True} if self.cfg.decoder_only else {})}


def _check_header(path: Path) -> None:
    """Open an image's header (cheap): a file that is not an image is caught before training starts."""
    try:
        with Image.open(path):
            pass
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RecordError("unreadable media", f"cannot read image file {path}: {exc}") from None


def read_media(manifest: str) -> tuple[list[Record], list[dict[str, Any]]]:
    """Usable records (any media; captions and questions ignored) and the skipped ones with reasons.

    Image headers are checked up front; a video or an image whose pixels turn out to be corrupt
    stops training later with an error naming its manifest line."""
    base = Path(manifest).resolve().parent
    records, skipped = [], []
    for line, text in read_lines(manifest):
        try:
            record = parse_record(line, text, base, need_text=False)
            for path in ([record.image] if record.image is not None else []) + list(record.frames):
                _check_header(path)
            records.append(record)
        except RecordError as exc:
            skipped.append({"line": line, "reason": exc.reason, "message": str(exc)})
    if not records:
        raise ValueError(f"no usable record in {manifest} ({len(skipped)} skipped: {skipped[:3]})")
    return records, skipped


def read_manifests(manifests: list[str]) -> tuple[list[Record], list[dict[str, Any]]]:
    """`read_media` of each manifest, records in order; each skipped entry names its manifest."""
    records, skipped = [], []
    for manifest in manifests:
        usable, dropped = read_media(manifest)
        records += usable
        skipped += [{"manifest": str(manifest), **entry} for entry in dropped]
    return records, skipped


def build_tokenizer(cfg: VQTrainConfig) -> tuple[VisionTokenizer, ImageProcessor]:
    """The tokenizer to train (from a preset or a folder; re-initialised with `init`) and its processor."""
    if cfg.preset is not None:
        torch.manual_seed(cfg.seed)
        vq = VisionTokenizer(vq_preset(cfg.preset))
        # A new tokenizer is used at the size it learns: inference resizes every image to that area.
        area = cfg.resolution ** 2
        return vq, ImageProcessor(min_pixels=area, max_pixels=area, spatial_factor=vq.spatial_factor)
    vq, processor = checkpoint.load_vision_tokenizer(cfg.vision_tokenizer)
    if cfg.init:
        torch.manual_seed(cfg.seed)
        vq = VisionTokenizer(vq.config)
    elif not cfg.decoder_only:  # code aliases describe the loaded encoder and codebook, which will change
        vq.quantize.set_aliases(None)
    return deepen(vq, cfg.add_res_blocks, cfg.seed), processor


def _export(state: dict[str, torch.Tensor], vq: VisionTokenizer, processor: ImageProcessor, dest: Path,
            cfg: VQTrainConfig) -> Path:
    """Save the trained tokenizer (`state` of `VQLoss`) in the official layout at `dest`, weights in the
    dtypes `cfg` asks for; never over the tokenizer `cfg` fine-tunes."""
    _check_export_target(dest, cfg)
    state = {k[len("vq."):]: v for k, v in state.items() if k.startswith("vq.")}
    return export.save_vision_tokenizer(state, vq.config, processor, dest, vq.quantize.aliases(), cfg.export_dtype,
                                        cfg.export_encoder_dtype)


def _check_export_target(dest: Path, cfg: VQTrainConfig) -> None:
    """Refuse `dest` as the export of a run that fine-tunes a tokenizer there (or in a folder it holds)."""
    export.refuse_overwrite(dest, [Path(cfg.vision_tokenizer) if cfg.vision_tokenizer else None])


def export_checkpoint(folder: Path, dest: Path, cfg: VQTrainConfig) -> Path:
    """Export the tokenizer of checkpoint `folder` (trained with `cfg`) to `dest/vision-tokenizer`."""
    vq, processor = build_tokenizer(cfg)
    return _export(load_file(str(folder / "model.safetensors")), vq, processor, dest / export.VQ_DIR, cfg)


def train_vq(cfg: VQTrainConfig, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Run (or resume) vision-tokenizer training as `cfg` says; every process calls this."""
    info = distributed.setup(cfg.device)
    try:
        check_output(cfg)  # before the tokenizer is loaded and the manifests are checked
        dest = Path(cfg.output) / "export" / export.VQ_DIR
        if cfg.save:
            _check_export_target(dest, cfg)
        vq, processor = build_tokenizer(cfg)
        f = vq.spatial_factor
        for name in ("resolution", "crop"):
            if getattr(cfg, name) % f:
                raise ValueError(f"{name} {getattr(cfg, name)} must be a multiple of the spatial factor {f}")
        if cfg.autoencoder_steps and info.world_size > 1:
            raise ValueError("autoencoder_steps (the k-means codebook initialisation) runs on one process only")
        if cfg.decoder_only:  # the encoder side and the codebook stay as loaded
            for name, param in vq.named_parameters():
                param.requires_grad_(name.startswith(export.VQ_DECODER_SIDE))
        records, skipped = read_manifests(cfg.data)
        module = distributed.shard(VQLoss(vq, cfg), [], info)
        layout = Layout(cfg.micro_batch_size, cfg.grad_accum, info.world_size)
        plan = Plan(np.ones(len(records), dtype=np.int64), [np.arange(len(records))], [1.0], layout, seed=cfg.seed,
                    bucket_window=0, drop_prob=0.0)
        if cfg.autoencoder_steps and cfg.autoencoder_steps >= total_steps(cfg, plan):
            raise ValueError(f"autoencoder_steps ({cfg.autoencoder_steps}) must be fewer than the run's "
                             f"{total_steps(cfg, plan)} steps: the codebook is only set (by k-means) at step "
                             f"{cfg.autoencoder_steps}, so this run would export a tokenizer with a random codebook")
        task = VQTask(module, Media(records, processor, cfg.resolution, cfg.num_frames, cfg.seed, cfg.crop), plan, cfg,
                      vq.config.codebook_size, info.device)
        torch.manual_seed(cfg.seed + info.rank)
        result = fit(cfg, task, info, on_step)
        summary = {"steps": result.steps, **result.final, "records": len(records), "skipped": len(skipped),
                   "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped_records": skipped, "world_size": info.world_size}
        if info.is_main and cfg.save:
            summary["export"] = str(_export(result.model_state, vq, processor, dest, cfg))
        distributed.barrier(info)
        return summary
    finally:
        distributed.teardown(info)
