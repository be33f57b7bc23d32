"""Building modules whose tensors are assigned or initialised afterwards: on the meta device, with
torch's random initialisation skipped.

A module built under `torch.device("meta")` still runs its `reset_parameters`; for `nn.Embedding`
that is a meta `normal_`, whose first call imports `torch._dynamo` (1.3 s of the 3.7 s that the
`emu3 generate` main job took on a 2-core CPU; benchmarks/RESULTS.md). Nothing is drawn on the meta
device anyway, so `build_on_meta` turns the initialisers into no-ops on meta tensors.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

_INITIALISERS = frozenset({
    torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.trunc_normal_, torch.nn.init.kaiming_uniform_,
    torch.nn.init.kaiming_normal_, torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_,
    torch.Tensor.normal_, torch.Tensor.uniform_,
})


class _SkipInitialisers(TorchFunctionMode):
    """Returns a meta tensor handed to an initialiser untouched; everything else runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INITIALISERS:
            tensor = args[0] if args else kwargs["tensor"]
            if tensor.is_meta:
                return tensor
        return func(*args, **(kwargs or {}))


@contextmanager
def build_on_meta() -> Iterator[None]:
    """Modules built inside have meta tensors and no initialisation computed."""
    with torch.device("meta"), _SkipInitialisers():
        yield
