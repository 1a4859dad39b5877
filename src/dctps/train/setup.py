"""Build the model, make it sparse, and build its optimizer, LR schedule and RigL from a RunConfig.

``apply_sparsity`` implements the ``sparsity`` section:

* ``dense``: nothing;
* ``dctps``: :func:`dctps.sparsify` (``W = alpha * D + S``) with ``allocation``, ``offset``,
  ``alpha`` (scope), ``alpha_init`` and ``charge_alpha``, seed = run seed;
* any pruning method: :func:`dctps.pruning.prune` on batches of the training set (FORCE/Iter-SNIP
  use Table E.2's batch counts unless ``num_batches`` is given); the time it takes is returned.
  With ``progress=True`` the method's iterations show as a tqdm bar on stderr.

``restore_structure`` gives a freshly built model the module structure of a saved one (DCTpS
layers, or ``torch.nn.utils.prune`` masks) so that ``load_state_dict`` can restore it without
re-running a pruning method.

Weight decay: by default only weight tensors are decayed (the ``values`` of DCTpS layers, the
weights / ``weight_orig`` of Conv2d and Linear layers, every parameter with ``ndim >= 2``); alphas,
biases, BatchNorm and Fixup scalars (1-D or 0-D) are not. ``decay_all`` decays everything, as the
reference code did.

Learning rate: one for every parameter, except where the architecture's recipe scales some
(:func:`dctps.models.lr_factors`): FixupResNet110's scalar biases, scales and classifier bias
train at a tenth of it, as in Fixup's and the DCTpS authors' code.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from dctps.errors import DctpsError
from dctps.layers import DCTpSLayer
from dctps.pruning.common import prepare_pruned_structure
from dctps.train.config import OptimConfig, RunConfig, _named

__all__ = [
    "apply_sparsity",
    "build_model",
    "model_shape",
    "model_to_load",
    "make_optimizer",
    "make_rigl",
    "make_scheduler",
    "maybe_batch_rebuild",
    "check_rigl_schedule",
    "param_groups",
    "restore_structure",
]


def build_model(cfg: RunConfig, info: Any) -> nn.Module:
    """The dense model of ``cfg`` for data set ``info``, initialised under ``torch.manual_seed``
    (which :func:`dctps.train.fit` restores for its caller when it returns)."""
    torch.manual_seed(cfg.seed)
    return _build(cfg, info)


def model_shape(cfg: RunConfig, info: Any) -> nn.Module:
    """The model of ``cfg`` on the meta device, uninitialised (:func:`_compat.shapes_only`),
    for checks before a run: it leaves torch's global generators as they were (a check that
    seeded them changed what a caller drew after a sweep's planning)."""
    from dctps import _compat

    with _compat.shapes_only(), torch.random.fork_rng(devices=[]):
        return _build(cfg, info)


def model_to_load(cfg: RunConfig, info: Any) -> nn.Module:
    """The model of ``cfg`` for values a checkpoint holds: initialised as :func:`build_model`
    does (the load overwrites it), but with torch's global generators left as they were (a
    notebook's draws after reading a checkpoint followed the run's seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)
        return _build(cfg, info)


def _build(cfg: RunConfig, info: Any) -> nn.Module:
    from dctps import models

    return models.build(
        cfg.model.name,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=info.image_size,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pruning_options(cfg: RunConfig) -> dict[str, Any]:
    """The method options passed to ``dctps.pruning.prune`` (Table E.2 defaults filled in)."""
    from dctps import pruning

    s = cfg.sparsity
    opts = dict(s.options)
    if s.method in pruning.TABLE_E2_BATCHES and "num_batches" not in opts:
        opts["num_batches"] = pruning.default_batches(cfg.data.dataset)
    return opts


def apply_sparsity(
    model: nn.Module,
    cfg: RunConfig,
    batches: Iterable[Any] | None = None,
    progress: bool = False,
) -> float | None:
    """Make ``model`` sparse in place per ``cfg.sparsity`` (resolved); return pruning seconds.

    ``progress``: show the pruning method's iterations as a tqdm bar on stderr (``fit`` passes
    its own ``progress`` on the main rank only); off by default.

    Returns ``None`` for ``dense`` and ``dctps`` (no pruning step). Raises
    :class:`~dctps.errors.PruningFailed` when a pruning method cannot reach the density.
    """
    s = cfg.sparsity
    if s.method == "dense":
        return None
    if s.method == "dctps":
        from dctps.sparsify import sparsify

        assert s.density is not None and s.allocation is not None  # set by RunConfig.resolve()
        sparsify(
            model,
            s.density,
            s.allocation,
            seed=cfg.seed,
            exclude=s.options.get("exclude"),
            train_alpha=s.train_alpha,
            offset=s.offset,
            alpha=s.alpha,
            alpha_init=s.alpha_init,
            charge_alpha=s.charge_alpha,
        )
        return None
    from dctps import pruning

    device = next(model.parameters()).device
    _sync(device)
    t0 = time.perf_counter()
    assert s.density is not None  # set by RunConfig.resolve()
    pruning.prune(
        model,
        s.density,
        s.method,
        batches,
        allocation=s.allocation,
        progress=progress,
        # RigL regrows weights by gradient and can reconnect a start without a path
        require_path=not s.rigl,
        **pruning_options(cfg),
    )
    _sync(device)
    return time.perf_counter() - t0


def maybe_batch_rebuild(model: nn.Module, cfg: RunConfig, device: torch.device) -> bool:
    """Put :func:`dctps.batch_rebuild` on a DCTpS ``model`` per ``cfg.batched_rebuild``.

    ``auto`` turns it on for CUDA only: there a step is bound by kernel launches, which batching
    cuts; on the CPU the per-layer rebuild is bound by memory bandwidth and batching does not help.
    Returns whether it was put on.
    """
    if cfg.sparsity.method != "dctps" or cfg.batched_rebuild == "off":
        return False
    if cfg.batched_rebuild == "auto" and device.type != "cuda":
        return False
    from dctps.batched import batch_rebuild

    batch_rebuild(model)
    return True


def restore_structure(
    model: nn.Module, cfg: RunConfig, state_dict: dict[str, torch.Tensor]
) -> None:
    """Give a fresh dense ``model`` the structure of the sparse model saved in ``state_dict``.

    DCTpS: the same :func:`dctps.sparsify` call (``load_state_dict`` then restores the saved
    supports and values). Pruning methods: ``prune.identity`` on every layer saved with
    ``weight_orig``/``weight_mask`` (the masks come from ``state_dict``, the method is not re-run).
    """
    s = cfg.sparsity
    if s.method == "dctps":
        apply_sparsity(model, cfg)
    elif s.method != "dense":
        pruned = prepare_pruned_structure(model, state_dict)
        if not pruned:
            raise DctpsError(f"the checkpoint of this {s.method} run holds no pruning masks")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_all: bool = False,
    lr_factors: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups by weight decay (``decay``/``no_decay``, module doc) and learning-rate
    factor: a parameter whose full name contains a key of ``lr_factors`` (the first that
    matches) gets ``lr_factor`` = its value (e.g. Fixup's scalars, 0.1), others 1. Groups with
    factor 1 come first (``decay``, then ``no_decay``, both always present); frozen params are
    skipped. A ``DctpsError`` for a ``weight_decay`` that is not a finite number ``>= 0`` (the
    optimizer would refuse a negative one only when built, naming no group)."""
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, numbers.Real)
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise DctpsError(
            f"param_groups: weight_decay must be a finite number >= 0, got {weight_decay!r}"
        )
    factors = dict(lr_factors or {})
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            decayed = (
                decay_all or p.ndim >= 2 or (isinstance(module, DCTpSLayer) and name == "values")
            )
            full = f"{mname}.{name}" if mname else name
            factor = next((f for key, f in factors.items() if key in full), 1.0)
            groups.setdefault((decayed, float(factor)), []).append(p)
    out = []
    for (decayed, factor), params in groups.items():
        if not params and factor != 1.0:
            continue
        label = "decay" if decayed else "no_decay"
        out.append(
            {
                "params": params,
                "weight_decay": weight_decay if decayed else 0.0,
                "name": label if factor == 1.0 else f"{label}_lr_x{factor:g}",
                "lr_factor": factor,
            }
        )
    return out


def make_optimizer(
    model: nn.Module, o: OptimConfig, lr_factors: Mapping[str, float] | None = None
) -> torch.optim.Optimizer:
    """Adam (L2 weight decay, as the reference) or SGD with momentum, per resolved ``o``; the
    groups of :func:`param_groups`, each at ``o.lr`` times its ``lr_factor`` (the LR schedule
    then scales every group alike)."""
    assert o.lr is not None and o.weight_decay is not None
    groups = param_groups(model, o.weight_decay, o.decay_all, lr_factors)
    if not any(g["params"] for g in groups):
        raise DctpsError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = o.lr * g["lr_factor"]
    kw: dict[str, Any] = {"fused": True} if o.fused else {}
    try:
        if o.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=o.lr, **kw)
        elif o.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum or 0.0, **kw)
        else:
            raise DctpsError(f"unknown optimizer {o.optimizer!r}; valid: adam, sgd")
        if o.fused:  # torch 2.3 builds a fused CPU SGD whose first step has no kernel
            _fused_probe(opt, groups)
        return opt
    except (RuntimeError, NotImplementedError) as e:  # no fused kernel for this device or dtype
        if not o.fused:
            raise
        where = f"torch {torch.__version__}, device {_params_device(groups)}"
        why = str(e).strip().split(". ")[0].rstrip(".")  # not its kernel list
        raise DctpsError(
            f"fused {o.optimizer} is not available here ({where}): {why}; leave out "
            f"{_named('fused')}"
        ) from None


def _fused_probe(opt: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """One step of ``opt``'s kind on a throwaway one-element parameter of the model's device and
    dtype: a missing fused kernel raises here, not at the run's first step."""
    p0 = next(p for g in groups for p in g["params"])
    probe = torch.nn.Parameter(torch.zeros(1, device=p0.device, dtype=p0.dtype))
    probe.grad = torch.ones_like(probe)
    defaults = {k: v for k, v in opt.defaults.items() if k != "differentiable"}
    type(opt)([probe], **defaults).step()


def _params_device(groups: list[dict[str, Any]]) -> str:
    return next((str(p.device) for g in groups for p in g["params"]), "?")


def make_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig) -> Any:
    """Step decay by ``gamma`` at each milestone epoch (constant LR when there is none)."""
    assert o.gamma is not None  # set by RunConfig.resolve()
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(o.milestones or []), o.gamma)


def make_rigl(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int
) -> Any:
    """A ``dctps.dst.rigl.RigL`` for the run, or ``None`` without ``rigl``."""
    s = cfg.sparsity
    if not s.rigl:
        return None
    try:
        from dctps.dst.rigl import RigL
    except ImportError as e:
        raise DctpsError(f"RigL is not available ({e})") from None
    # set by RunConfig.resolve()
    assert s.rigl_delta_t is not None and s.rigl_alpha is not None and s.rigl_t_end is not None
    rigl = RigL(
        model,
        optimizer,
        total_steps,
        delta_t=s.rigl_delta_t,
        alpha=s.rigl_alpha,
        t_end=s.rigl_t_end,
    )
    check_rigl_schedule(cfg, total_steps)
    return rigl


def check_budget_on_meta(model: nn.Module, cfg: RunConfig) -> None:
    """The :class:`DctpsError` that :func:`apply_sparsity` raises for a DCTpS ``cfg`` before
    anything is drawn (a density whose budget cannot pay for per-channel alphas, an
    ``exclude`` that matches no layer), found on ``model`` built on the meta device (10 ms for
    LeNet-5, up to 2 s for ResNet50 with EPF). Another failure is the meta device's limit, not
    the run's: ignored (the real build checks again). Nothing for other methods."""
    if cfg.sparsity.method != "dctps":
        return
    try:
        with torch.device("meta"):
            apply_sparsity(model, cfg)
    except DctpsError:
        raise
    except Exception:
        pass


def train_steps(cfg: RunConfig) -> int:
    """The optimizer steps of ``cfg`` on one process with the data set's official files:
    ``epochs * ceil(n / batch_size)``, ``n`` its training images after the validation hold-out,
    or its ``subset``. Never fewer than the loader of ``dctps train`` gives (smaller files, a
    DDP shard and ``drop_last`` give fewer), so a schedule refused on this count is refused
    there too."""
    from dctps.data import get_info
    from dctps.data.split import holdout_size

    c = cfg.resolve()  # the recipe's epochs and batch size, the data set's hold-out
    epochs, batch = c.optim.epochs, c.optim.batch_size
    assert epochs is not None and batch is not None  # set by resolve()
    n, _ = get_info(c.data.dataset).sizes
    n_train = n - holdout_size(n, c.data.val_fraction or 0.0)
    if c.data.subset is not None:
        n_train = min(n_train, c.data.subset)
    return epochs * -(-n_train // batch)


def check_rigl_schedule(cfg: RunConfig, total_steps: int) -> None:
    """A :class:`DctpsError` for a ``--rigl`` run that would never update its supports: RigL
    updates at steps ``t`` with ``t % delta_t == 0`` and ``t < T_end = int(t_end * total_steps)``
    (a short run, ``--epochs 1 --subset 5000``: 70 steps, trained as a static one but recorded
    as RigL). Checked before the run is recorded or pruned, and by :func:`make_rigl`."""
    s = cfg.sparsity
    if not s.rigl:
        return
    assert s.rigl_delta_t is not None and s.rigl_t_end is not None  # set by resolve()
    t_end = int(s.rigl_t_end * total_steps)
    if s.rigl_delta_t < t_end:
        return
    if t_end <= 1:
        fix = (
            f"RigL needs more epochs or data (or a larger {_named('rigl_t_end')}) than this run's "
            f"{total_steps} step(s)"
        )
    else:
        fix = f"give {_named('rigl_delta_t')} below {t_end}, or more epochs or data"
    raise DctpsError(
        f"RigL would never update the supports: it updates every {s.rigl_delta_t} steps "
        f"until step {t_end} ({s.rigl_t_end:g} of this run's {total_steps} steps); {fix}"
    )
