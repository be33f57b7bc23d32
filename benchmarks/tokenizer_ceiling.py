"""Where a vision tokenizer loses the Shapes world's pictures: its codebook or its autoencoder.

    python benchmarks/tokenizer_ceiling.py                       # the bundled Shapes tokenizer
    python benchmarks/tokenizer_ceiling.py --codebooks 1024 4096 --prompts 200

ShapesEval's tokenizer row (PSNR and the round trip's claims on the ground-truth pictures of
held-out prompts, seed 0), three ways: the tokenizer as it is; its encoder and decoder with a
codebook of K entries fitted by k-means to the encoder's latents of `--pictures` fresh pictures
(the codes of flat patches kept, so K - 11 go to edges); and no quantization at all (the decoder
given the encoder's latents). When a bigger codebook scores no better than the tokenizer, codes are
not what limits it; when the unquantized latents score no better either, the encoder and decoder
are. Each row also splits the error by place: PSNR within `EDGE_REACH` pixels of a color change of
the true picture and elsewhere, and the share of the squared error that lies near edges. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile

import numpy as np
import torch

from emu3.bundled import vision_tokenizer_or_bundled
from emu3.checkpoint import load_vision_tokenizer
from emu3.datasets.shapes import write_dataset
from emu3.eval.shapes import evaluate_shapes
from emu3.pipelines.reconstruct import reconstruct
from emu3.train.kmeans import kmeans
from emu3.train.vq import read_media
from emu3.vision.vq import VectorQuantizer


EDGE_REACH = 2  # pixels: how far from a color change a pixel counts as near an edge


def near_edges(picture: np.ndarray, reach: int = EDGE_REACH) -> np.ndarray:
    """(H, W) mask of the pixels within `reach` (chessboard distance) of a color change of `picture` (H, W, 3)."""
    mask = np.zeros(picture.shape[:2], bool)
    rows, cols = (picture[1:] != picture[:-1]).any(-1), (picture[:, 1:] != picture[:, :-1]).any(-1)
    mask[1:] |= rows
    mask[:-1] |= rows
    mask[:, 1:] |= cols
    mask[:, :-1] |= cols
    for _ in range(reach):
        padded = np.pad(mask, 1)
        mask = np.max([padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    return mask


def error_by_place(pairs) -> dict:
    """PSNR near edges and elsewhere, and the edges' share of the squared error, over (truth, copy) pictures."""
    sums = {True: [0.0, 0], False: [0.0, 0]}  # near an edge -> [squared error, pixels]
    for truth, copy in pairs:
        a = np.asarray(truth.convert("RGB"), np.float64)
        b = np.asarray(copy.convert("RGB").resize(truth.size), np.float64)
        error, edges = ((a - b) ** 2).mean(-1), near_edges(a)
        for place in (True, False):
            sums[place][0] += float(error[edges == place].sum())
            sums[place][1] += int((edges == place).sum())

    def psnr(place: bool) -> float:
        total, n = sums[place]
        return 10 * math.log10(255**2 / max(total / max(n, 1), 1e-10))
    total = sums[True][0] + sums[False][0]
    return {"psnr_edges_db": psnr(True), "psnr_elsewhere_db": psnr(False),
            "edge_pixels": sums[True][1] / max(sums[True][1] + sums[False][1], 1),
            "edge_error_share": sums[True][0] / total if total else 0.0}


def round_trip(roundtrip, prompts: int) -> dict:
    pairs = []

    def recorded(image):
        copy = roundtrip(image)
        pairs.append((image, copy))
        return copy
    scores = evaluate_shapes(reconstruct=recorded, n_prompts=prompts).tokenizer
    return {"psnr_db": scores.psnr, "fully_right": scores.round_trip, "claims": scores.round_trip_claims,
            "categories": scores.round_trip_categories, **error_by_place(pairs)}


def latents(vq, processor, images) -> torch.Tensor:
    """(N, E, h, w) pre-quantization latents of PIL images or paths."""
    pixels = torch.stack(processor.preprocess(images))
    return torch.cat([vq.latents(pixels[i:i + 256])[:, 0] for i in range(0, len(pixels), 256)])


def refitted(codebook: torch.Tensor, flat_codes: torch.Tensor, points: torch.Tensor, size: int) -> VectorQuantizer:
    """A codebook of `size`: the `flat_codes` rows of `codebook`, then k-means centres of `points` (N, E)."""
    if size <= len(flat_codes) or size - len(flat_codes) > len(points):
        raise SystemExit(f"--codebooks {size}: need more than the {len(flat_codes)} flat codes and at most "
                         f"{len(flat_codes) + len(points)} (the edge patches found); use more --pictures")
    quantizer = VectorQuantizer(size, points.shape[1])
    centres = kmeans(points, size - len(flat_codes), generator=torch.Generator().manual_seed(0))
    quantizer.embedding.weight.copy_(torch.cat([codebook[flat_codes], centres]))
    return quantizer


def unquantized(vq, processor):
    """A round trip that skips the codebook: the decoder is given the encoder's latents."""
    def run(image):
        pixels = torch.stack(processor.preprocess([image]))
        return processor.postprocess(vq.decode_vectors(vq.latents(pixels), image=True))[0]
    return run


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vision-tokenizer", help="tokenizer folder (default: the bundled one)")
    p.add_argument("--codebooks", type=int, nargs="*", default=[1024, 4096], help="codebook sizes to fit")
    p.add_argument("--pictures", type=int, default=3000, help="fresh pictures the codebooks are fitted to")
    p.add_argument("--prompts", type=int, default=200, help="held-out ShapesEval prompts scored")
    a = p.parse_args()
    folder = vision_tokenizer_or_bundled(a.vision_tokenizer)
    vq, processor = load_vision_tokenizer(folder)
    as_is = vq.quantize

    def through_codes(image):  # with whichever codebook `vq` has at the time
        return reconstruct(vq, processor, [image]).frames[0]

    report = {"vision_tokenizer": str(folder), "pictures": a.pictures, "prompts": a.prompts,
              "as_is": round_trip(through_codes, a.prompts)}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_dataset(tmp, n_images=a.pictures, seed=5, image_size=64)
        points = latents(vq, processor, [r.image for r in read_media(str(manifest))[0]])
    points = points.permute(0, 2, 3, 1).reshape(-1, points.shape[1])  # (patches, E)
    codes = as_is(points[:, None, :, None, None]).flatten()
    canonical = as_is.canonical
    flat_codes = canonical[canonical != torch.arange(len(canonical))].unique()  # the merged flat colors
    edges = points[~torch.isin(codes, flat_codes)]
    report["edge_patches"] = len(edges)
    for size in a.codebooks:
        vq.quantize = refitted(as_is.embedding.weight, flat_codes, edges, size)
        vq.config = dataclasses.replace(vq.config, codebook_size=size)  # decode checks codes against it
        report[f"codebook_{size}"] = round_trip(through_codes, a.prompts)
    report["unquantized"] = round_trip(unquantized(vq, processor), a.prompts)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
