"""dctps: Dense for the Price of Sparse (Price & Tanner, ICML 2021).

Every Linear/Conv2d weight becomes ``W = alpha * D + S``: ``D`` a fixed truncated DCT, ``S`` sparse
and trainable on a random support, ``alpha`` a trainable scalar. Start with :func:`sparsify`.
"""

from dctps import data, models  # so dctps.models.build / dctps.data.build work after `import dctps`
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
    "data",
    "models",
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
