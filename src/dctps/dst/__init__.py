"""Dynamic sparse training: the support of the sparse weights moves during training.

:class:`RigL` (Evci et al., ICML 2020; ``docs/BASELINES.md`` §7) works on masked layers
(``torch.nn.utils.prune`` convention, e.g. from :func:`dctps.pruning.prune`) and on the sparse part
``S`` of DCTpS layers (the paper's "DCTpS + RigL").
"""

from dctps.dst.rigl import RigL

__all__ = ["RigL"]
