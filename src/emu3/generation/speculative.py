"""Speculative Jacobi decoding of image tokens: several tokens per forward, same output distribution.

Training-free parallel decoding (Teng et al., 2024, "Accelerating auto-regressive text-to-image
generation with training-free speculative Jacobi decoding"). Each forward feeds the last committed
token and a window of draft tokens, giving the model's distribution at every window position. Drafts
are verified left to right with the speculative-sampling rule: accept draft x with probability
min(1, p(x) / q(x)), q being the distribution x was drawn from; at the first rejection, draw from
the normalised residual max(0, p - q) and stop. Accepted tokens are exactly distributed as plain
sampling; under greedy decoding acceptance means "draft == argmax", so the output equals plain
greedy decoding. Positions the grid forces are drafted as the forced id and always accepted. The
unverified window positions get new drafts drawn from this forward's distributions (the Jacobi
step), so drafts improve as the context settles. Rows of a batch commit the same number of tokens
per forward (the smallest count; committing a prefix of accepted tokens keeps them exact). So when
sampling, unlike the plain loop, a row's random draws and hence its image depend on the other rows:
a seed reproduces an image only in the same batch (greedy output never depends on the batch).
"""

from __future__ import annotations

import torch

from emu3.generation.engine import ImageBatch, StepFn
from emu3.generation.loop import Progress
from emu3.generation.sampling import draw, warp


def _uniform(batch: int, count: int, generators: list[torch.Generator] | None, device) -> torch.Tensor:
    """Uniform [0, 1) numbers (B, count) from each row's generator."""
    return torch.stack([torch.rand(count, generator=g, device=device) for g in (generators or [None] * batch)])


@torch.no_grad()  # not inference_mode: quantized weight subclasses cannot be sliced under it
def speculative_jacobi(b: ImageBatch, draft_len: int, *, progress: Progress | None = None,
                       step_fn: StepFn | None = None, stats: dict | None = None) -> list[list[int]]:
    """Decode `b`'s images with windows of `draft_len` tokens; see the module docstring."""
    if b.prompt_len < 2:
        raise ValueError("speculative decoding needs prompts of at least two tokens")
    greedy = b.sampling.is_greedy
    codebook, device, batch, gens = b.visual_head.shape[0], b.device, b.batch, b.generators
    step = step_fn or b.model.hidden
    b.model.hidden(b.ids[:, :-1], torch.arange(b.prompt_len - 1, device=device), b.cache)
    last = b.ids[:, -1]  # (R,): the token whose KV is not in the cache yet
    uniform = torch.full((batch, draft_len, codebook), 1.0 / codebook, device=device)
    drafts = torch.zeros(batch, draft_len, dtype=torch.long, device=device) if greedy else draw(uniform, gens)
    q = uniform.clone()  # (B, L, K): the distribution each draft was drawn from
    out = torch.empty(batch, b.total, dtype=torch.long, device=device)
    pos = forwards = 0
    while pos < b.total:
        n_win = min(draft_len, b.total - pos)
        forced = b.forced(pos + 1, n_win).to(device)  # (B, n_win): -1 where free
        draft_ids = torch.where(forced >= 0, forced, drafts[:, :n_win] + b.vocab.visual_base)
        tokens_in = torch.cat([last[:, None], b.feed(draft_ids[:, : n_win - 1])], 1)  # (R, n_win)
        slots = torch.arange(b.prompt_len - 1 + pos, b.prompt_len - 1 + pos + n_win, device=device)
        scores = warp(b.visual_scores(step(tokens_in, slots, b.cache)).flatten(0, 1), b.sampling)
        p = scores.softmax(-1).view(batch, n_win, codebook)
        forwards += 1

        if greedy:
            target = p.argmax(-1)  # (B, n_win)
            ok = drafts[:, :n_win] == target
        else:
            p_draft = p.gather(-1, drafts[:, :n_win, None])[..., 0]
            q_draft = q[:, :n_win].gather(-1, drafts[:, :n_win, None])[..., 0]
            ok = _uniform(batch, n_win, gens, device) * q_draft <= p_draft
        ok |= forced >= 0
        accepted = ok.long().cumprod(1).sum(1)  # (B,) leading accepted drafts
        n = int(torch.clamp(accepted + 1, max=n_win).min())  # the one host sync per forward

        committed = draft_ids[:, :n].clone()
        rejected = accepted < n  # rows whose position n-1 was rejected: take the correction there
        if bool(rejected.any()):
            if greedy:
                fix = target[:, n - 1]
            else:
                residual = (p[:, n - 1] - q[:, n - 1]).clamp_min(0)
                mass = residual.sum(-1, keepdim=True)
                residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p[:, n - 1])
                fix = draw(residual[:, None], gens)[:, 0]
            committed[:, n - 1] = torch.where(rejected, fix + b.vocab.visual_base, committed[:, n - 1])
        out[:, pos:pos + n] = committed
        last = b.feed(committed[:, -1])
        pos += n

        # Jacobi step: the window's unverified positions are redrafted from this forward's distributions.
        keep = n_win - n
        new_q = uniform.clone()
        new_q[:, :keep] = p[:, n:]
        drafts = new_q.argmax(-1) if greedy else draw(new_q, gens)
        q = new_q
        if progress is not None:
            progress(pos, b.total)
    if stats is not None:
        stats.update(forwards=forwards + 1, tokens=b.total)
    return b.trim(out)
