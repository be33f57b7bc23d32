"""Watch the ids a running generation has chosen so far, for partial-image previews and text streaming.

The pipelines report progress as (done, total) only, but every decode step feeds the ids just chosen
back into the model. `TokenTap` wraps a decode-step function (`hidden(ids, input_pos, cache)`) and
keeps a copy of the first `rows` rows of each step's input ids, so it sees the output as it grows,
one step behind (the last id is never fed back). Image generation takes it as `text_to_image`'s
`step_fn`; chat's decode loop has no such hook, so `TappedModel` stands in for the language model
and routes its decode calls (every `hidden` call after the prefill) through a tap. Both serve one
generation, on the thread that runs it, assume one id per row per step (not speculative decoding),
and change no result.
"""

from __future__ import annotations

from typing import Callable

import torch


class TokenTap:
    """A decode-step function that records the ids it is fed, then calls `step`."""

    def __init__(self, step: Callable[..., torch.Tensor], rows: int) -> None:
        self._step, self._rows = step, rows  # the first `rows` batch rows are the conditional ones
        self._steps: list[torch.Tensor] = []

    def __call__(self, ids: torch.Tensor, input_pos: torch.Tensor, cache) -> torch.Tensor:
        self._steps.append(ids[: self._rows].clone())  # (rows, T)
        return self._step(ids, input_pos, cache)

    def ids(self) -> list[list[int]]:
        """The ids generated so far by each of the first `rows` rows (all but the newest)."""
        if not self._steps:
            return [[] for _ in range(self._rows)]
        return torch.cat(self._steps, dim=1).tolist()


class TappedModel:
    """Proxy of a `Transformer` whose `hidden` calls after the first (the prefill) go through `tap`."""

    def __init__(self, lm, tap: TokenTap) -> None:
        self._lm, self._tap, self._prefilled = lm, tap, False

    def __getattr__(self, name: str):
        return getattr(self._lm, name)

    def hidden(self, ids: torch.Tensor, input_pos: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        if not self._prefilled:
            self._prefilled = True
            return self._lm.hidden(ids, input_pos, cache)
        return self._tap(ids, input_pos, cache)
