"""Shims for the oldest torch this package supports (``torch>=2.3`` in pyproject.toml).

Each name is torch's own object where this torch has it, so a newer torch runs exactly the code
it ran without the shim; only an older torch gets the replacement.
"""

from __future__ import annotations

import functools
import io
import pickle
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch

_match = re.match(r"(\d+)\.(\d+)", torch.__version__)
assert _match is not None, torch.__version__
#: ``(major, minor)`` of the torch in use, e.g. ``(2, 3)``.
TORCH_VERSION: tuple[int, int] = (int(_match[1]), int(_match[2]))

#: ``torch.OutOfMemoryError`` (torch >= 2.4; before, the same class was only
#: ``torch.cuda.OutOfMemoryError``).
OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", None) or (
    torch.cuda.OutOfMemoryError
)


def _legacy_autocast(device_type: str) -> tuple[Callable[[], bool], Callable[[], torch.dtype]]:
    """torch < 2.4's per-device autocast getters; a ``RuntimeError`` for a device type autocast
    does not know there (as ``torch.is_autocast_enabled(device_type)`` raises on a newer torch)."""
    table: dict[str, tuple[Callable[[], bool], Callable[[], torch.dtype]]] = {
        "cpu": (torch.is_autocast_cpu_enabled, torch.get_autocast_cpu_dtype),
        "cuda": (torch.is_autocast_enabled, torch.get_autocast_gpu_dtype),
    }
    for name in ("xla", "ipu"):
        enabled = getattr(torch, f"is_autocast_{name}_enabled", None)
        dtype = getattr(torch, f"get_autocast_{name}_dtype", None)
        if enabled is not None and dtype is not None:
            table[name] = (enabled, dtype)
    if device_type not in table:
        raise RuntimeError(
            f"autocast: unsupported device type {device_type!r} on torch {torch.__version__}"
        )
    return table[device_type]


def _is_autocast_enabled_legacy(device_type: str) -> bool:
    return _legacy_autocast(device_type)[0]()


def _get_autocast_dtype_legacy(device_type: str) -> torch.dtype:
    return _legacy_autocast(device_type)[1]()


#: ``torch.is_autocast_enabled(device_type)`` / ``torch.get_autocast_dtype(device_type)``
#: (torch >= 2.4, where ``is_autocast_enabled`` takes a device type).
if hasattr(torch, "get_autocast_dtype"):
    is_autocast_enabled = cast(Callable[[str], bool], torch.is_autocast_enabled)
    get_autocast_dtype = cast(Callable[[str], torch.dtype], torch.get_autocast_dtype)
else:  # torch 2.3
    is_autocast_enabled = _is_autocast_enabled_legacy
    get_autocast_dtype = _get_autocast_dtype_legacy

#: Whether a ``torch.compile`` graph may build a layer's basis ``D`` on the CPU. A graph that
#: built two layers' ``D`` returned NaN on torch 2.3 (AOT autograd, any backend but ``'eager'``)
#: and failed to compile on 2.4 (Inductor: "Invalid NaN comparison"); there ``D`` is built
#: eagerly, outside the graph, as on an accelerator (a graph break).
COMPILE_BUILDS_BASIS: bool = TORCH_VERSION >= (2, 5)


@functools.cache
def _weights_only_loads_counter() -> bool:
    """Whether ``torch.load(weights_only=True)`` reads a ``collections.Counter`` (torch 2.3's
    allowlist lacks it; torch 2.5 has it)."""
    buf = io.BytesIO()
    torch.save(Counter(), buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except pickle.UnpicklingError:
        return False
    return True


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """``scheduler.state_dict()``, readable by ``torch.load(weights_only=True)`` on this torch:
    where that cannot read a ``Counter``, ``MultiStepLR``'s milestones are stored as a dict."""
    state: dict[str, Any] = scheduler.state_dict()
    if isinstance(state.get("milestones"), Counter) and not _weights_only_loads_counter():
        state = {**state, "milestones": dict(state["milestones"])}
    return state


def load_scheduler_state(scheduler: Any, state: Mapping[str, Any]) -> None:
    """``scheduler.load_state_dict(state)``, with milestones that :func:`scheduler_state` stored
    as a dict (a checkpoint written on an older torch) made a ``Counter`` again."""
    milestones = state.get("milestones")
    if isinstance(getattr(scheduler, "milestones", None), Counter) and (
        isinstance(milestones, dict) and not isinstance(milestones, Counter)
    ):
        state = {**state, "milestones": Counter(milestones)}
    scheduler.load_state_dict(state)


def shapes_only() -> Any:
    """A context in which modules are built on the meta device without running their
    initialisers: ``with torch.device("meta")`` runs them through ``torch._refs``, whose first
    call imports ``torch._dynamo`` (2-7 s to build a LeNet-5's shapes). Only the value-only
    in-place ops an initialiser uses (:data:`_INIT_OPS`) are skipped on a meta tensor; a
    shape-changing one (``unsqueeze_``) or ``requires_grad_`` still runs. Where this torch has
    no ``torch.utils._device.DeviceContext`` (the private class ``torch.device`` enters), plain
    ``torch.device("meta")``."""
    try:
        from torch.utils._device import DeviceContext
    except ImportError:  # pragma: no cover - every torch from 2.0 has it
        return torch.device("meta")

    class _ShapesOnly(DeviceContext):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if getattr(func, "__name__", "") in _INIT_OPS:
                tensors = (*args, *(kwargs or {}).values())
                first = next((a for a in tensors if isinstance(a, torch.Tensor)), None)
                if first is not None and first.is_meta:
                    return first
            return super().__torch_function__(func, types, args, kwargs)

    return _ShapesOnly(torch.device("meta"))


#: in-place ops that set values and keep the shape: torch.nn.init's initialisers and the
#: tensor methods they call
_INIT_OPS = frozenset(
    {n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")}
    | {
        "normal_",
        "uniform_",
        "fill_",
        "zero_",
        "random_",
        "bernoulli_",
        "exponential_",
        "geometric_",
        "log_normal_",
        "cauchy_",
        "copy_",
        "mul_",
        "add_",
        "sub_",
        "div_",
        "clamp_",
        "clamp_min_",
        "clamp_max_",
        "erfinv_",
        "abs_",
        "neg_",
        "sqrt_",
        "exp_",
        "log_",
        "pow_",
        "sign_",
        "addcmul_",
        "addcdiv_",
    }  # fmt: skip
)
