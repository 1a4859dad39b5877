"""dctps: Dense for the Price of Sparse (Price & Tanner, ICML 2021).

Every Linear/Conv2d weight becomes ``W = alpha * D + S``: ``D`` a fixed truncated DCT, ``S`` sparse
and trainable on a random support, ``alpha`` a trainable scalar. Start with :func:`sparsify`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# so that dctps.models.build, dctps.pruning.build, ... work after `import dctps` (and type
# checkers see them)
from dctps import allocation, data, models, pruning
from dctps._version import __version__
from dctps.allocation import budgets
from dctps.batched import batch_rebuild
from dctps.checkpoint_io import inspect, load, note_supports, save, to_dense
from dctps.errors import DctpsError, PruningFailed
from dctps.fast import set_mode
from dctps.layers import DCTpSConv2d, DCTpSLinear
from dctps.pruning import prune
from dctps.sparsify import Counts, count, sparsify

__all__ = [
    "__version__",
    "allocation",
    "data",
    "models",
    "pruning",
    "DctpsError",
    "PruningFailed",
    "DCTpSLinear",
    "DCTpSConv2d",
    "budgets",
    "batch_rebuild",
    "sparsify",
    "count",
    "prune",
    "Counts",
    "set_mode",
    "save",
    "load",
    "inspect",
    "to_dense",
    "note_supports",
]

if TYPE_CHECKING:
    from dctps import dst as dst
    from dctps import results as results
    from dctps import train as train

#: subpackages imported on first use (`dctps.train.fit` after `import dctps`): the training
#: loop, the results store and plots, and RigL import more than a model's conversion needs
_LAZY = ("dst", "results", "train")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"dctps.{name}")
    raise AttributeError(f"module 'dctps' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
