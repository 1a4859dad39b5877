"""Sparse checkpoints of DCTpS models, their inspection, and export to plain PyTorch.

``save(model, path)`` writes only what a DCTpS model trains or needs: per DCTpS layer ``alpha``,
the ``nnz`` non-zeros ``values`` and their flat positions ``indices`` (as int32), the bias, and the
layer's constructor arguments (shape, stride, ...); every other entry of the ``state_dict``
(BatchNorm parameters and statistics, excluded dense layers) verbatim. ``D`` is a function of the
shape and is never stored. A ResNet50 at 0.1% density takes ~0.6 MB against ~94 MB for
``torch.save(model.state_dict())`` of the dense network (``benchmarks/bench_ckpt.py``).

File layout (little endian; no pickle, so loading a file never runs code)::

    b"DCTPSCK1"  | uint64 header length | zlib(JSON header) | payload | trailer
    trailer = uint32 CRC-32 of (header + payload) | uint64 total file length | b"DCTPSEND"

The JSON header holds ``format``, ``version``, the optional architecture spec ``arch`` (``{'name',
'num_classes', ...}`` for :func:`dctps.models.build`), one entry per DCTpS layer (name, type,
constructor config, nnz) and one per stored tensor (key, dtype, shape, byte offset). Truncated,
corrupted and foreign files raise :class:`~dctps.errors.DctpsError` naming the file and the problem.

``load(path)`` rebuilds the model from ``arch``; ``load(path, model=m)`` accepts a fresh dense
model of the same architecture (its Linear/Conv2d/MultiheadAttention layers are replaced by DCTpS
layers from the stored configs) or an already sparsified one. ``inspect(path)`` lists per-layer
rows; ``to_dense(model)`` returns a plain PyTorch copy with fused ``W = alpha * D + S``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import struct
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, cast, overload

import torch
from torch import nn
from torch.nn.utils import prune, skip_init

from dctps import _compat, offsets
from dctps._types import ModuleT
from dctps._version import __version__
from dctps.atomic import atomic_write
from dctps.batched import strip
from dctps.errors import (
    DctpsError,
    check_module,
    is_count,
    one_line,
    unknown_name,
    user_device,
    user_path,
    warn_at_caller,
)
from dctps.layers import DCTpSConv2d, DCTpSLayer, DCTpSLinear
from dctps.sparsify import DCTpSMultiheadAttention, move_hooks, own_attributes, set_submodule

__all__ = ["save", "load", "inspect", "to_dense", "note_supports", "CheckpointInfo", "LayerRow",
           "FORMAT"]  # fmt: skip

FORMAT = "dctps-checkpoint"
VERSION = 1
MAGIC = b"DCTPSCK1"
END = b"DCTPSEND"
_TRAILER = struct.Struct("<IQ8s")
_HEAD = struct.Struct("<8sQ")
_ALIGN = 8

_DTYPES = {
    str(t).removeprefix("torch."): t
    for t in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
        torch.complex128, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
        torch.bool,
    )
}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Layer configs
# ------------------------------------------------------------------------------------------------


def _offset_config(m: DCTpSLayer) -> dict[str, Any]:
    """A non-default offset / alpha scope (absent for the paper's, so older files compare equal).

    A random offset's seed is the layer's ``offset_seed`` buffer, stored with the tensors."""
    out: dict[str, Any] = {}
    if getattr(m, "offset", "dct") != "dct":
        out["offset"] = m.offset
    if getattr(m, "alpha_scope", "layer") != "layer":
        out["alpha"] = m.alpha_scope
    return out


def _shared_fields(m: DCTpSLinear | DCTpSConv2d) -> dict[str, Any]:
    """The constructor arguments that every DCTpS layer shares."""
    return {
        "bias": m.bias is not None,
        "nnz": m.nnz,
        "train_alpha": m.alpha.requires_grad,
        "mode": m.mode,
        "shape": list(m.weight_shape),
        **_offset_config(m),
    }


def _layer_config(m: nn.Module) -> dict[str, Any]:
    """The constructor arguments that re-create a DCTpS module's structure (not its values)."""
    if isinstance(m, DCTpSLinear):
        return {
            "type": "DCTpSLinear",
            "in_features": m.in_features,
            "out_features": m.out_features,
            **_shared_fields(m),
        }
    if isinstance(m, DCTpSConv2d):
        return {
            "type": "DCTpSConv2d",
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation),
            "groups": m.groups,
            **_shared_fields(m),
        }
    if isinstance(m, DCTpSMultiheadAttention):
        return {
            **_offset_config(m.in_proj),
            "type": "DCTpSMultiheadAttention",
            "embed_dim": m.embed_dim,
            "num_heads": m.num_heads,
            "dropout": m.dropout,
            "batch_first": m.batch_first,
            "add_zero_attn": m.add_zero_attn,
            "bias": m.in_proj.bias is not None,
            "add_bias_kv": m.bias_k is not None,
            "in_nnz": m.in_proj.nnz,
            "out_nnz": m.out_proj.nnz,
            "train_alpha": m.in_proj.alpha.requires_grad,
            "shape": [3 * m.embed_dim, m.embed_dim],
        }
    raise DctpsError(f"not a DCTpS module: {type(m).__name__}")


def _dctps_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level DCTpS modules (a DCTpSMultiheadAttention's inner layers are part of it)."""
    found: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, DCTpSMultiheadAttention):
            found.append((name, m))
            inside.append(name)
        elif isinstance(m, DCTpSLayer):
            found.append((name, m))
    return found


def _all_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name of every module (id -> names, in ``named_modules`` order), shared ones too."""
    out: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        out.setdefault(id(m), []).append(name)
    return out


def _factory(like: nn.Module | None) -> dict[str, Any]:
    if like is None:
        return {}
    p = next(iter(like.parameters()), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


def _build_layer(cfg: dict[str, Any], old: nn.Module | None, state: dict[str, torch.Tensor],
                 prefix: str) -> nn.Module:  # fmt: skip
    """A DCTpS module from its stored config (support taken from the stored indices; a random
    offset's seed is restored with the ``offset_seed`` buffer by the state-dict load)."""
    kind = cfg.get("type")
    fac = _factory(old)
    off = {"offset": cfg.get("offset", "dct"), "alpha": cfg.get("alpha", "layer")}
    if offsets.needs_seed(off["offset"]):
        off["offset_seed"] = 0  # placeholder: overwritten by the stored buffer
    if kind == "DCTpSLinear":
        m: nn.Module = DCTpSLinear(
            cfg["in_features"], cfg["out_features"], cfg["nnz"], cfg["bias"],
            indices=state[prefix + "indices"], train_alpha=cfg.get("train_alpha", True),
            mode=cfg.get("mode", "dense"), **off, **fac,
        )  # fmt: skip
        return m
    if kind == "DCTpSConv2d":
        pad = cfg["padding"]
        return DCTpSConv2d(
            cfg["in_channels"], cfg["out_channels"], tuple(cfg["kernel_size"]),
            tuple(cfg["stride"]), pad if isinstance(pad, str) else tuple(pad),
            tuple(cfg["dilation"]), cfg["groups"], cfg["bias"], nnz=cfg["nnz"],
            indices=state[prefix + "indices"], train_alpha=cfg.get("train_alpha", True),
            mode=cfg.get("mode", "dense"), **off, **fac,
        )  # fmt: skip
    if kind == "DCTpSMultiheadAttention":
        if not isinstance(old, nn.MultiheadAttention):  # its values: the stored ones
            old = cast(nn.MultiheadAttention, skip_init(
                nn.MultiheadAttention,
                cfg["embed_dim"], cfg["num_heads"], cfg["dropout"], bias=cfg["bias"],
                add_bias_kv=cfg["add_bias_kv"], add_zero_attn=cfg["add_zero_attn"],
                batch_first=cfg["batch_first"], **fac,
            ))  # fmt: skip
        return DCTpSMultiheadAttention(
            old, cfg["in_nnz"], cfg["out_nnz"], seed=0, train_alpha=cfg.get("train_alpha", True),
            **off,
        )  # fmt: skip
    raise DctpsError(f"unknown layer type {kind!r} in the checkpoint")


# ------------------------------------------------------------------------------------------------
# The container
# ------------------------------------------------------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _unwrapped_once(model: nn.Module) -> nn.Module:
    """The model one ``torch.compile``, ``DataParallel`` or ``DistributedDataParallel`` wrapper
    holds, else ``model``."""
    if type(model).__name__ == "OptimizedModule":
        inner = model.__dict__.get("_modules", {}).get("_orig_mod")
    elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = model.module
    else:
        return model
    return inner if isinstance(inner, nn.Module) else model


def _wrappers(model: nn.Module) -> list[nn.Module]:
    """``model`` and the models inside its ``torch.compile``, ``DataParallel`` and
    ``DistributedDataParallel`` wrappers, outermost first; the last is the plain model. Their
    state dict names carry ``_orig_mod.`` or ``module.``, which the plain model's do not, and
    one checkpoint serves all of them."""
    chain = [model]
    while (inner := _unwrapped_once(chain[-1])) is not chain[-1]:
        chain.append(inner)
    return chain


def save(
    model: nn.Module, path: str | os.PathLike[str], arch: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` as a sparse DCTpS checkpoint; return the path.

    Stored: every ``state_dict`` entry, with each DCTpS layer's ``indices`` as int32 (int64 only
    for a layer with more than 2^31 weights) and the masks of a pruned model as ``bool``, plus
    the DCTpS layers' configs and, when known, the architecture spec ``arch`` (``{'name': ...,
    'num_classes': ..., ...}``, the keyword arguments of :func:`dctps.models.build`; taken from
    ``model.dctps_arch`` when not given) so that :func:`load` can rebuild the model without its
    class. The write is atomic (temp file, rename).
    """
    if not isinstance(model, nn.Module):
        raise DctpsError(
            f"save needs an nn.Module, got {type(model).__name__}: the model comes first, "
            "dctps.save(model, path)"
        )
    if not isinstance(path, (str, os.PathLike)):  # as load says it, before the model's walk
        raise DctpsError(
            f"a checkpoint path must be a str or os.PathLike, got {type(path).__name__}: "
            "dctps.save writes a file by path (atomically, beside its final name)"
        )
    model = _wrappers(model)[-1]
    given_arch = arch is not None
    arch = arch if arch is not None else getattr(model, "dctps_arch", None)
    if arch is not None:
        if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
            raise DctpsError(f"arch must be a dict with a 'name' (e.g. 'resnet18'), got {arch!r}")
        from dctps.models import names as model_names

        if arch["name"] not in model_names():  # found now, not when the file is loaded
            raise unknown_name("architecture (arch['name'])", arch["name"], model_names())
        arch = json.loads(json.dumps(arch))  # plain JSON values only
    layers = []
    index_keys: set[str] = set()
    names = _all_names(model)
    alias_prefixes: list[str] = []
    for name, m in _dctps_modules(model):
        for layer in m.modules():
            if isinstance(layer, DCTpSLayer):
                layer._check_initialised()  # to_empty() garbage would be saved as a support
        _check_support(m)  # refused now, not when the file is loaded
        cfg = _layer_config(m)
        aliases = [n for n in names[id(m)] if n != name]
        # one module under several names (weight sharing): stored once, under its first name
        layers.append({"name": name, **cfg, **({"aliases": aliases} if aliases else {})})
        alias_prefixes.extend(f"{n}." for n in aliases)
        subs = [""] if isinstance(m, DCTpSLayer) else ["in_proj.", "out_proj."]
        prefix = f"{name}." if name else ""
        index_keys.update(prefix + s + "indices" for s in subs)
    if arch is not None:
        problem = _arch_problem(arch, layers, model)
        if problem is not None and given_arch:
            raise DctpsError(
                f"arch={json.dumps(arch)[:120]} does not describe the model being saved, so "
                f"load could not rebuild it from the file: {problem}. Give the keyword arguments "
                "the model was built with (dctps.models.build(name, **kwargs)), or no arch "
                "(then dctps.load(path, model))"
            )
        if problem is not None:
            # the model's own spec (dctps.models.build), from before its head was replaced for
            # fine-tuning: saved without it, as before the check, for load(path, model)
            warn_at_caller(
                f"saving without the model's dctps_arch {json.dumps(arch)[:100]}, which no "
                f"longer describes it ({problem[:200]}): load the file with dctps.load(path, "
                "model), or give save(..., arch={...}) that builds the model as it is now",
                UserWarning,
            )
            arch = None
    tensors = []
    chunks: list[bytes] = []
    offset = 0
    from dctps.pruning.common import compact_masks

    for key, t in compact_masks(model.state_dict()).items():
        if any(key.startswith(p) for p in alias_prefixes):
            continue  # the same tensors as under the layer's first name
        if not isinstance(t, torch.Tensor):
            raise DctpsError(f"state_dict entry {key!r} is not a tensor ({type(t).__name__})")
        if key in index_keys and (t.numel() == 0 or int(t.max()) < 2**31 - 1):
            t = t.to(torch.int32)
        data = _tensor_bytes(t)
        pad = (-len(data)) % _ALIGN
        tensors.append(
            {"key": key, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
             "offset": offset, "nbytes": len(data)}
        )  # fmt: skip
        chunks.append(data + b"\0" * pad)
        offset += len(data) + pad
    header = {
        "format": FORMAT,
        "version": VERSION,
        "dctps_version": __version__,
        "arch": arch,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "layers": layers,
        "tensors": tensors,
    }
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    payload = b"".join(chunks)
    crc = zlib.crc32(payload, zlib.crc32(head))
    total = _HEAD.size + len(head) + len(payload) + _TRAILER.size
    path = user_path(path, "the checkpoint path")
    with atomic_write(path, "checkpoint", "wb") as f:
        f.write(_HEAD.pack(MAGIC, len(head)))
        f.write(head)
        f.write(payload)
        f.write(_TRAILER.pack(crc, total, END))
    return path


def _refuse_magic(path: Path, head: bytes) -> NoReturn:
    """The :class:`DctpsError` for a file that does not start with :data:`MAGIC`."""
    hint = ""
    if head[:2] == b"PK":
        hint = (
            " (it looks like a torch.save zip file: a `dctps train` checkpoint such as "
            "best.pt becomes one with `dctps export CKPT OUT`, or "
            "dctps.train.checkpoint.model_from_checkpoint(CKPT) gives its model; any other "
            "torch.save file loads with torch.load)"
        )
    elif head[:1] == b"\x80":
        hint = " (it looks like a pickle: load it with torch.load)"
    raise DctpsError(f"{path} is not a dctps checkpoint: bad magic bytes{hint}")


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], memoryview, int]:
    """Header, payload and file size of a checkpoint, or a DctpsError naming what is wrong."""
    if not isinstance(path, (str, os.PathLike)):
        # a model here is the arguments swapped (save takes the model first): pathlib's
        # TypeError would not say so
        swapped = (
            ": the path comes first, dctps.load(path, model)" if isinstance(path, nn.Module) else ""
        )
        raise DctpsError(
            f"a checkpoint path must be a str or os.PathLike, got {type(path).__name__}{swapped}"
        )
    path = user_path(path, "the checkpoint path")
    try:
        if path.exists() and not path.is_dir() and not path.is_file():
            # a FIFO or a device: reading it would wait or never end (/dev/zero)
            raise DctpsError(f"{path} is not a regular file, so not a dctps checkpoint")
        with open(path, "rb") as f:  # the magic first: a large file of another kind is not read
            if f.read(len(MAGIC)) != MAGIC:
                f.seek(0)
                _refuse_magic(path, f.read(_HEAD.size))
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DctpsError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        from dctps.train.checkpoint import checkpoints_in

        raise DctpsError(f"{path} is a folder, not a checkpoint: {checkpoints_in(path)}") from None
    except OSError as e:
        raise DctpsError(f"cannot read checkpoint {path}: {e}") from None
    size = len(raw)
    if size < _HEAD.size or raw[:8] != MAGIC:
        _refuse_magic(path, raw[: _HEAD.size])
    if size < _HEAD.size + _TRAILER.size or raw[-8:] != END:
        raise DctpsError(f"checkpoint {path} is truncated or corrupt: no end marker ({size} bytes)")
    crc, total, _ = _TRAILER.unpack(raw[-_TRAILER.size :])
    if total != size:
        raise DctpsError(
            f"checkpoint {path} is truncated or padded: header says {total} bytes, file has {size}"
        )
    _, hlen = _HEAD.unpack(raw[: _HEAD.size])
    body_end = size - _TRAILER.size
    if _HEAD.size + hlen > body_end:
        raise DctpsError(f"checkpoint {path} is corrupt: header length {hlen} exceeds the file")
    head = raw[_HEAD.size : _HEAD.size + hlen]
    payload = memoryview(raw)[_HEAD.size + hlen : body_end]
    if zlib.crc32(payload, zlib.crc32(head)) != crc:
        raise DctpsError(f"checkpoint {path} is corrupt: checksum mismatch")
    try:
        d = zlib.decompressobj()
        text = d.decompress(head, MAX_HEADER_BYTES)
        if d.unconsumed_tail:
            raise ValueError(f"it expands beyond {MAX_HEADER_BYTES} bytes")
        if not d.eof or d.unused_data:
            # the CRC covers header and payload as one stream: a header length off by a few
            # bytes kept it valid and shifted every tensor (a pruned model loaded as NaNs)
            raise ValueError("the compressed header does not end where the header length says")
        header = json.loads(text)
    except (zlib.error, ValueError, RecursionError) as e:
        raise DctpsError(f"checkpoint {path} is corrupt: unreadable header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DctpsError(f"{path} is not a dctps checkpoint (format field missing)")
    if header.get("version") != VERSION:
        raise DctpsError(
            f"checkpoint {path} has format version {header.get('version')!r}; this dctps "
            f"({__version__}) reads version {VERSION}"
        )
    _check_layout(header, len(payload), path)
    _check_layers(header, path)
    _check_arch(header, path)
    return header, payload, size


def _check_arch(header: dict[str, Any], path: Any) -> None:
    """A :class:`DctpsError` for an architecture spec that is not ``{"name": str, ...}`` with
    an integral ``revision``: a list or a string gave an ``AttributeError``, a spec without a
    name a ``KeyError``."""
    arch = header.get("arch")
    if arch is None:
        return
    revision = arch.get("revision", 1) if isinstance(arch, dict) else None
    if not (isinstance(arch, dict) and isinstance(arch.get("name"), str) and is_count(revision)):
        raise DctpsError(
            f"checkpoint {path} is corrupt: its architecture spec {str(arch)[:80]} is not a "
            "mapping with a model name and an integral revision"
        )


def _check_layers(header: dict[str, Any], path: Any) -> None:
    """A :class:`DctpsError` for a malformed layer entry (types of the fields every entry has
    and of those a load acts on before the layer's constructor checks the rest)."""
    layers = header.get("layers", [])
    if not isinstance(layers, list):
        raise DctpsError(f"checkpoint {path} is corrupt: its layers are not a list")
    for cfg in layers:
        ok = (
            isinstance(cfg, dict)
            and isinstance(cfg.get("name"), str)
            and isinstance(cfg.get("type"), str)
            and isinstance(cfg.get("shape"), list)
            and all(is_count(n) for n in cfg["shape"])
            and isinstance(cfg.get("aliases", []), list)
            and all(isinstance(a, str) for a in cfg.get("aliases", []))
            and isinstance(cfg.get("train_alpha", True), bool)
            and isinstance(cfg.get("mode", "dense"), str)
            and isinstance(cfg.get("offset", "dct"), str)
            and isinstance(cfg.get("alpha", "layer"), str)
            # the counts inspect reads (a string or a missing one gave a raw error there)
            and all(
                is_count(cfg.get(k))
                for k in (
                    ("embed_dim", "in_nnz", "out_nnz")
                    if cfg.get("type") == "DCTpSMultiheadAttention"
                    else ("nnz",)
                )
            )
        )
        if not ok:
            raise DctpsError(f"checkpoint {path} is corrupt: malformed layer entry {str(cfg)[:80]}")


#: the most a checkpoint's header may expand to (a 433 KB file's expanded to 400 MB)
MAX_HEADER_BYTES = 64 << 20
#: above any tensor's dimension: an empty tensor declared ``[0, 2**70]`` overflowed torch's
#: stride computation with a raw ``RuntimeError``
MAX_DIM = 1 << 40


def _check_layout(header: dict[str, Any], payload_bytes: int, path: Any) -> None:
    """A :class:`DctpsError` unless the header's tensor entries are well formed and lie back to
    back, each padded to ``_ALIGN``, covering the payload exactly, as :func:`save` writes them."""
    entries = header.get("tensors")
    if not isinstance(entries, list):
        raise DctpsError(f"checkpoint {path} is corrupt: its header lists no tensors")
    end = 0
    for e in entries:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("key"), str)
            and isinstance(e.get("dtype"), str)
            and is_count(e.get("offset"))
            and is_count(e.get("nbytes"))
            and isinstance(e.get("shape"), list)
            and all(is_count(n) and n < MAX_DIM for n in e["shape"])
        ):
            raise DctpsError(f"checkpoint {path} is corrupt: malformed tensor entry {str(e)[:80]}")
        if e["offset"] != end:
            raise DctpsError(f"checkpoint {path} is corrupt: bad extent for tensor {e['key']!r}")
        end += e["nbytes"] + (-e["nbytes"]) % _ALIGN
    if end != payload_bytes:
        raise DctpsError(
            f"checkpoint {path} is corrupt: its tensors take {end} bytes, its payload has "
            f"{payload_bytes}"
        )


def _tensors(header: dict[str, Any], payload: memoryview, path: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for e in header["tensors"]:
        dtype = _DTYPES.get(e["dtype"])
        if dtype is None:
            raise DctpsError(f"checkpoint {path}: unknown dtype {e['dtype']!r} for {e['key']}")
        start, n = e["offset"], e["nbytes"]
        numel = math.prod(e["shape"])
        if start + n > len(payload) or n != numel * torch.empty(0, dtype=dtype).element_size():
            raise DctpsError(f"checkpoint {path} is corrupt: bad extent for tensor {e['key']!r}")
        if n == 0:
            t = torch.empty(e["shape"], dtype=dtype)
        else:
            buf = bytearray(payload[start : start + n])
            t = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(e["shape"])
        out[e["key"]] = t
    return out


@overload
def load(
    path: str | os.PathLike[str], model: None = None, map_location: Any = None
) -> nn.Module: ...


@overload
def load(path: str | os.PathLike[str], model: ModuleT, map_location: Any = None) -> ModuleT: ...


def load(
    path: str | os.PathLike[str], model: nn.Module | None = None, map_location: Any = None
) -> nn.Module:
    """Load a checkpoint written by :func:`save`; return the model (``model`` itself if given).

    Without ``model`` the file must hold an architecture spec: the model is built with
    :func:`dctps.models.build` and its layers are replaced by DCTpS layers. With ``model`` (a
    fresh dense model of the same architecture, or a sparsified one), each stored DCTpS layer
    replaces the module at the same name (keeping its device and dtype) and every tensor is
    loaded strictly. A rebuilt model takes the stored tensors' floating dtypes, module by
    module. ``map_location``: device to move the result to (default: the model's
    device, CPU for a rebuilt model).
    """
    if map_location is not None:
        map_location = user_device(map_location, "map_location")
    header, payload, _ = _read(path)  # first: a swapped call is named by its path
    if model is not None and not isinstance(model, nn.Module):
        raise DctpsError(
            f"load's model must be an nn.Module (a fresh instance of the saved architecture), got "
            f"a {type(model).__name__}: dctps.load(path) or dctps.load(path, model)"
        )
    state = _tensors(header, payload, path)
    given = model  # returned as given: a torch.compile wrapper too
    if model is None:
        arch = header.get("arch")
        if not arch:
            raise DctpsError(
                f"checkpoint {path} has no architecture spec (it was saved from a model not built "
                "by dctps.models.build, without arch=...); pass model=<a fresh instance>"
            )
        from dctps.models import check_revision

        check_revision(arch, f"checkpoint {path}")
        # the shapes first: a crafted spec allocates nothing
        _check_fits(_build_arch(arch, path, _compat.shapes_only()), header, state, path)
        with torch.random.fork_rng(devices=[]):  # initialised, then overwritten by the file
            model = _build_arch(arch, path)
        model.dctps_arch = dict(arch)  # type: ignore[assignment]
    elif not isinstance(model, nn.Module):
        raise DctpsError(f"load needs model=None or an nn.Module, got {type(model).__name__}")
    else:
        chain = _wrappers(model)
        # DDP registered its parameters when it wrapped the model: a layer the load replaced
        # or resized would train unsynchronised (or fail its first backward)
        if any(isinstance(m, nn.parallel.DistributedDataParallel) for m in chain):
            raise DctpsError(
                f"cannot load {path} into a DistributedDataParallel model: load it into the "
                "plain model (model.module) first, then wrap that in DistributedDataParallel"
            )
        model = chain[-1]
        mine, saved = getattr(model, "dctps_arch", None), header.get("arch")
        if (
            isinstance(mine, dict)
            and isinstance(saved, dict)
            and mine.get("name") == saved.get("name")
        ):
            from dctps.models import check_revision

            check_revision(saved, f"checkpoint {path}")
    for cfg in header.get("layers", []):
        name = cfg["name"]
        try:
            old = model.get_submodule(name) if name else model
        except AttributeError:
            raise DctpsError(
                f"checkpoint {path} has a DCTpS layer {name!r} that the given "
                f"{type(model).__name__} does not have"
            ) from None
        prefix = f"{name}." if name else ""
        _check_declared(cfg, state, path)
        _check_compatible(old, cfg, path)
        _check_aliases(model, old, cfg, path)
        if isinstance(old, (DCTpSLayer, DCTpSMultiheadAttention)) and _same_structure(old, cfg):
            if isinstance(old, DCTpSLayer) and "mode" in cfg:
                old.mode = cfg["mode"]
            if "train_alpha" in cfg:  # the file wins: a fixed alpha stays fixed
                alphas = [old] if isinstance(old, DCTpSLayer) else [old.in_proj, old.out_proj]
                for lay in alphas:
                    lay.alpha.requires_grad_(bool(cfg["train_alpha"]))
            continue
        if not name:
            raise DctpsError(f"checkpoint {path}: cannot replace the root module")
        # the new layer's bias, drawn from the global CPU generator (layers._draw_bias), is
        # overwritten by the file's: leave the caller's random stream where it was
        with torch.random.fork_rng(devices=[]):
            new = _build_layer(cfg, old, state, prefix)
        move_hooks(old, new)  # as sparsify does: the model's hooks keep working
        new.train(old.training)
        for n in [name, *cfg.get("aliases", [])]:
            set_submodule(model, n, new)
    for key, t in state.items():
        if key.endswith("indices") and t.dtype == torch.int32:
            state[key] = t.long()
    # a model pruned with dctps.prune (weight_orig + weight_mask): give the fresh model the same
    # torch.nn.utils.prune structure, which the load then fills with the stored masks
    from dctps.pruning.common import prepare_pruned_structure

    prepare_pruned_structure(model, state)
    for cfg in header.get("layers", []):  # a shared layer's other names: the same tensors
        prefix = f"{cfg['name']}." if cfg["name"] else ""
        for alias in cfg.get("aliases", []):
            for key in [k for k in state if k.startswith(prefix)]:
                state[f"{alias}.{key[len(prefix) :]}"] = state[key]
    if given is None:
        _take_stored_dtypes(model, state)
    missing, unexpected = _load_state(model, state, path)
    if missing or unexpected:
        raise DctpsError(
            f"checkpoint {path} does not match the {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    if map_location is not None:
        model.to(map_location)
    return given if given is not None else model


def _build_arch(arch: dict[str, Any], path: Any, within: Any = None) -> nn.Module:
    """The model of a checkpoint's architecture spec, built in context ``within`` (e.g.
    :func:`dctps._compat.shapes_only`)."""
    from dctps.models import build

    kwargs = {k: v for k, v in arch.items() if k not in ("name", "revision")}
    try:
        with within if within is not None else contextlib.nullcontext():
            return build(arch["name"], **kwargs)
    except DctpsError:
        raise
    except (TypeError, ValueError, RuntimeError, MemoryError) as e:  # crafted or foreign
        raise DctpsError(
            f"checkpoint {path}: its architecture spec {str(arch)[:120]} does not build "
            f"({one_line(e)})"
        ) from None


def _arch_problem(arch: dict[str, Any], layers: list[Any], model: nn.Module) -> str | None:
    """Why the architecture spec ``arch`` does not build ``model``'s shapes (``num_classes`` of
    another data set, a keyword ``build`` does not take), or ``None``: such a spec was saved,
    and :func:`load` failed on the file later, far from the slip."""
    try:
        probe = _build_arch(arch, "(being saved)", _compat.shapes_only())
        _check_fits(probe, {"layers": layers}, model.state_dict(), "(being saved)")
    except DctpsError as e:
        return str(e)
    return None


def _check_fits(probe: nn.Module, header: dict[str, Any], state: Mapping[str, Any], path: Any):
    """A :class:`DctpsError` where the model an architecture spec builds (``probe``, on the
    meta device) does not take the file's layers and tensors: found before the real model is
    allocated, which a crafted spec (``num_classes=10**7`` in 5 KB) made 3.4 GB."""
    layers = header.get("layers", [])
    for cfg in layers:
        try:
            built = f"the {type(probe).__name__} its architecture spec builds"
            _check_compatible(probe.get_submodule(cfg["name"]), cfg, path, built)
        except AttributeError:
            raise DctpsError(
                f"checkpoint {path} has a DCTpS layer {cfg['name']!r} that the "
                f"{type(probe).__name__} its architecture spec builds does not have"
            ) from None
    own = {f"{n}." if n else "" for cfg in layers for n in [cfg["name"], *cfg.get("aliases", [])]}
    for key, t in probe.state_dict().items():
        if any(key.startswith(p) for p in own if p):
            continue  # a DCTpS layer's: checked above
        stored = state.get(key, state.get(key + "_orig"))  # or pruned (weight_orig)
        if stored is not None and tuple(stored.shape) != tuple(t.shape):
            raise DctpsError(
                f"checkpoint {path}: {key} has shape {list(stored.shape)} in the file but "
                f"{list(t.shape)} in the {type(probe).__name__} its architecture spec builds"
            )


def _check_aliases(model: nn.Module, old: nn.Module, cfg: dict[str, Any], path: Any) -> None:
    """A :class:`DctpsError` for an alias of a layer (another name of a module registered
    twice) that names something else in ``model``: a crafted alias replaced the model's
    ``training`` flag, or another layer of it. An alias that names ``old`` itself, or nothing
    yet (a tie made on a built model, ``model.head = model.fc``, which the load makes again),
    is taken."""
    for alias in cfg.get("aliases", []):
        parent_name, _, leaf = alias.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            parent = None
        found = getattr(parent, leaf, None) if parent is not None and leaf else parent
        if parent is None or not leaf or (found is not None and found is not old):
            what = (
                "not a module's attribute"
                if parent is None or not leaf
                else f"a separate {type(found).__name__}"
            )
            raise DctpsError(
                f"checkpoint {path}: layer {cfg['name']!r} names {alias!r} as another name of "
                f"itself, but in the {type(model).__name__} {alias!r} is {what}"
            )


def _to_floating(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _take_stored_dtypes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give each module of a model rebuilt from its architecture the floating dtype its stored
    tensors have (a model saved in float64, bfloat16 or float16 came back float32: rounded, and
    refusing inputs of its own dtype). Module by module, so a float32 stem before a bfloat16
    body stays so; a module whose own stored tensors mix floating dtypes is left as built."""
    for prefix, module in model.named_modules():
        own = [*module._parameters.items(), *module._buffers.items()]
        key = f"{prefix}." if prefix else ""
        stored = {
            state[key + n].dtype
            for n, t in own
            if t is not None and t.is_floating_point() and key + n in state
        }
        stored = {d for d in stored if d.is_floating_point}
        if len(stored) != 1:
            continue
        (dtype,) = stored
        if any(t is not None and t.is_floating_point() and t.dtype != dtype for _, t in own):
            module._apply(functools.partial(_to_floating, dtype=dtype), recurse=False)


#: values of the optional layer-config keys when absent (see :func:`_offset_config`)
_CONFIG_DEFAULTS = {"offset": "dct", "alpha": "layer"}


def _same_structure(m: nn.Module, cfg: dict[str, Any]) -> bool:
    """Whether layer ``m`` can take the stored tensors as is: same type, shape and offset/alpha
    options (keys absent on either side mean the defaults: a ``'hadamard'`` file loaded into a
    ``'dct'`` layer rebuilds the layer). ``nnz``/``mode``/``train_alpha`` follow the file."""
    try:
        mine = _layer_config(m)
    except DctpsError:
        return False
    keys = (set(mine) | set(_CONFIG_DEFAULTS)) - {"nnz", "in_nnz", "out_nnz", "mode", "train_alpha"}
    return all(
        mine.get(k, _CONFIG_DEFAULTS.get(k)) == cfg.get(k, _CONFIG_DEFAULTS.get(k)) for k in keys
    )


def _fields_shape(cfg: dict[str, Any]) -> list[int] | None:
    """The weight shape a layer entry's constructor fields make (``out_features`` x
    ``in_features``, ...), which the layer :func:`_build_layer` builds will have; ``None`` where
    a field is not a count (or the type is unknown: refused later, by its name)."""
    kind = cfg.get("type")
    dims: list[Any]
    if kind == "DCTpSLinear":
        dims = [cfg.get("out_features"), cfg.get("in_features")]
    elif kind == "DCTpSConv2d":
        groups, kernel = cfg.get("groups"), cfg.get("kernel_size")
        if not (is_count(groups) and groups and is_count(cfg.get("in_channels"))):
            return None
        if not (isinstance(kernel, list) and len(kernel) == 2):
            return None
        dims = [cfg.get("out_channels"), cfg["in_channels"] // groups, *kernel]
    elif kind == "DCTpSMultiheadAttention":
        e: Any = cfg.get("embed_dim")
        dims = [3 * e if is_count(e) else None, e]
    else:
        return None
    return dims if all(is_count(d) for d in dims) else None


def _check_declared(cfg: dict[str, Any], state: dict[str, torch.Tensor], path: Any) -> None:
    """A :class:`DctpsError` naming the layer where a layer entry disagrees with itself or with
    its stored tensors: constructor fields that make another shape than its ``shape`` (a crafted
    ``out_features: 2**40`` loaded, and the first forward asked for 32 TiB), a non-zero count
    other than its stored values' and indices', or indices outside the declared weight."""
    if cfg.get("type") not in ("DCTpSLinear", "DCTpSConv2d", "DCTpSMultiheadAttention"):
        return  # refused by _build_layer, naming the type
    where = f"checkpoint {path} is corrupt: layer {cfg['name']!r}"
    shape = _fields_shape(cfg)
    if shape is None or shape != cfg["shape"]:
        raise DctpsError(
            f"{where} declares weight shape {cfg['shape']}, but its constructor fields make "
            f"{shape if shape is not None else 'none (a field is not a count)'}"
        )
    prefix = f"{cfg['name']}." if cfg["name"] else ""
    if cfg["type"] == "DCTpSMultiheadAttention":
        e = shape[1]
        parts = [
            ("in_proj.", cfg.get("in_nnz"), 3 * e * e),
            ("out_proj.", cfg.get("out_nnz"), e * e),
        ]
    else:
        parts = [("", cfg.get("nnz"), math.prod(shape))]
    for sub, nnz, size in parts:
        values, indices = state.get(prefix + sub + "values"), state.get(prefix + sub + "indices")
        if values is None or indices is None:
            continue  # the strict state-dict load names the missing keys
        if not (is_count(nnz) and values.numel() == indices.numel() == nnz):
            raise DctpsError(
                f"{where}{' ' + sub[:-1] if sub else ''} declares nnz={nnz!r} but stores "
                f"{values.numel()} values and {indices.numel()} indices"
            )
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise DctpsError(f"{where}: its indices are {indices.dtype}, not integers")
        alpha = state.get(prefix + sub + "alpha")
        for what, t in (("values", values), ("alpha", alpha)):
            if t is not None and not (t.is_floating_point() or t.is_complex()):
                # an int or bool tensor was cast silently
                raise DctpsError(f"{where}: its {what} are {t.dtype}, not floating point")
        if nnz and not (int(indices.min()) >= 0 and int(indices.max()) < size):
            raise DctpsError(
                f"{where}{' ' + sub[:-1] if sub else ''} stores positions "
                f"{int(indices.min())}..{int(indices.max())}, outside its declared weight "
                f"{shape} ([0, {size}))"
            )


def _check_compatible(
    old: nn.Module, cfg: dict[str, Any], path: Any, model: str = "the given model"
) -> None:
    """Refuse to put a layer of another shape where the checkpoint's layer was."""
    shape = cfg.get("shape")
    if isinstance(old, (nn.Linear, nn.Conv2d, DCTpSLayer)):
        have = list(old.weight_shape if isinstance(old, DCTpSLayer) else old.weight.shape)
    elif isinstance(old, (nn.MultiheadAttention, DCTpSMultiheadAttention)):
        have = [3 * old.embed_dim, old.embed_dim]
    else:
        raise DctpsError(
            f"checkpoint {path}: layer {cfg['name']!r} is a {cfg['type']} in the file but a "
            f"{type(old).__name__} in {model}"
        )
    if have != shape:
        raise DctpsError(
            f"checkpoint {path}: layer {cfg['name']!r} has weight shape {shape} in the file but "
            f"{have} in {model}"
        )


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Any):
    try:
        res = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise DctpsError(
            f"checkpoint {path} does not match the {type(model).__name__}: "
            f"{' '.join(s.strip() for s in first[:3])}"
        ) from None
    return list(res.missing_keys), list(res.unexpected_keys)


# ------------------------------------------------------------------------------------------------
# Inspection
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRow:
    """One DCTpS layer of a checkpoint: its name, type, weight shape, non-zeros and stored bytes."""

    name: str
    type: str
    shape: tuple[int, ...]
    nnz: int
    weights: int
    nbytes: int

    @property
    def density(self) -> float:
        """``nnz / weights`` of this layer."""
        return self.nnz / self.weights if self.weights else 0.0


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect` reports: per-layer rows, the other tensors, sizes and the arch spec."""

    path: str
    file_bytes: int
    arch: dict[str, Any] | None
    rows: list[LayerRow]
    other_tensors: int
    other_elements: int
    other_bytes: int
    dctps_version: str = ""
    model_class: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: how many DCTpS layers have each setting: ``{"offset": {"dct": 5}, "alpha": {"layer": 5},
    #: "fixed alpha": 0}``
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        """Non-zeros of ``S`` over all DCTpS layers of the checkpoint."""
        return sum(r.nnz for r in self.rows)

    @property
    def weights(self) -> int:
        """Weight entries (dense size) of all DCTpS layers of the checkpoint."""
        return sum(r.weights for r in self.rows)

    @property
    def density(self) -> float:
        """``nnz / weights`` over all DCTpS layers."""
        return self.nnz / self.weights if self.weights else 0.0

    def table(self) -> str:
        """A plain-text table: one line per layer, then totals and the file size."""
        head = (
            f"{'layer':<34} {'type':<24} {'shape':<20} {'nnz':>10} {'weights':>12} {'density':>9}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r.shape))
            lines.append(
                f"{r.name or '(root)':<34} {r.type:<24} {shape:<20} {r.nnz:>10,} "
                f"{r.weights:>12,} {r.density:>8.4%}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total DCTpS':<34} {len(self.rows):<24} {'':<20} {self.nnz:>10,} "
            f"{self.weights:>12,} {self.density:>8.4%}"
        )
        lines.append(
            f"outside the DCTpS layers (BatchNorm, dense layers; a DCTpS layer's bias is "
            f"stored with the layer): {self.other_tensors} tensors, {self.other_elements:,} "
            f"elements, {self.other_bytes:,} bytes"
        )
        if self.settings:
            offsets = ", ".join(f"{k} ({n})" for k, n in self.settings["offset"].items())
            scopes = ", ".join(f"per {k} ({n})" for k, n in self.settings["alpha"].items())
            lines.append(f"DCTpS layers: offset {offsets}; alpha {scopes}; "
                         f"{self.settings['fixed alpha']} with alpha fixed")  # fmt: skip
        arch = json.dumps(self.arch) if self.arch else "none (load needs model=...)"
        lines.append(f"architecture: {arch}")
        if isinstance(self.arch, dict):
            from dctps.models import check_revision

            try:
                check_revision(self.arch, "the file")
            except DctpsError as e:  # dctps.load refuses it: say so here already
                lines.append(f"note: {e}")
        lines.append(f"file size: {self.file_bytes:,} bytes ({self.file_bytes / 1e6:.3f} MB)")
        return "\n".join(lines)


def inspect(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read a checkpoint's header (no model needed): per-layer non-zeros, shapes and sizes."""
    header, _, size = _read(path)
    by_key = {e["key"]: e for e in header["tensors"]}
    rows: list[LayerRow] = []
    used: set[str] = set()
    for cfg in header.get("layers", []):
        name = cfg["name"]
        prefix = f"{name}." if name else ""
        if cfg["type"] == "DCTpSMultiheadAttention":
            e = cfg["embed_dim"]
            parts = [("in_proj", (3 * e, e), cfg["in_nnz"]), ("out_proj", (e, e), cfg["out_nnz"])]
        else:
            parts = [("", tuple(cfg["shape"]), cfg["nnz"])]
        for sub, shape, nnz in parts:
            p = prefix + (sub + "." if sub else "")
            keys = [k for k in by_key if k.startswith(p) and "." not in k[len(p) :]]
            used.update(keys)
            nbytes = sum(by_key[k]["nbytes"] for k in keys)
            rows.append(
                LayerRow(p.rstrip(".") or name, cfg["type"] if not sub else "DCTpSLinear",
                         tuple(shape), int(nnz), math.prod(shape), nbytes)
            )  # fmt: skip
    other = [e for k, e in by_key.items() if k not in used]
    # an attention entry holds two DCTpS projections, counted as two rows above
    layers = [c for c in header.get("layers", [])
              for _ in range(2 if c["type"] == "DCTpSMultiheadAttention" else 1)]  # fmt: skip
    settings = {
        "offset": dict(Counter(str(c.get("offset", "dct")) for c in layers)),
        "alpha": dict(Counter(str(c.get("alpha", "layer")) for c in layers)),
        "fixed alpha": sum(c.get("train_alpha", True) is False for c in layers),
    } if layers else {}  # fmt: skip
    return CheckpointInfo(
        path=str(path),
        file_bytes=size,
        arch=header.get("arch"),
        rows=rows,
        other_tensors=len(other),
        other_elements=sum(math.prod(e["shape"]) for e in other),
        other_bytes=sum(e["nbytes"] for e in other),
        dctps_version=header.get("dctps_version", ""),
        model_class=header.get("model_class", ""),
        settings=settings,
    )


# ------------------------------------------------------------------------------------------------
# Export to plain PyTorch
# ------------------------------------------------------------------------------------------------


def _grads(module: nn.Module, name: str) -> bool:
    """Whether ``module.<name>`` trains. A tensor pruned with ``torch.nn.utils.prune`` trains
    as its ``<name>_orig`` Parameter does: ``module.<name>`` is then ``<name>_orig * <name>_mask``,
    which :func:`to_dense` copied without grad (:func:`_pruned_copies`)."""
    orig = module._parameters.get(name + "_orig")
    t = orig if orig is not None else getattr(module, name)
    return t is not None and t.requires_grad


def _trains(layer: DCTpSLayer) -> bool:
    """Whether ``W = alpha * D + S`` of ``layer`` trains: its ``alpha`` or its ``values`` do."""
    return _grads(layer, "alpha") or _grads(layer, "values")


def _copy_requires_grad(m: nn.Module, new: nn.Module) -> None:
    """Freeze what was frozen: each dense tensor of ``new`` requires grad as what it was made
    of does (a frozen model's export came back trainable, and an optimizer built over its
    ``parameters()`` then trained every fused weight)."""
    if isinstance(m, DCTpSLayer):
        new.weight.requires_grad_(_trains(m))
        if m.bias is not None:
            new.bias.requires_grad_(_grads(m, "bias"))
        return
    assert isinstance(m, DCTpSMultiheadAttention) and isinstance(new, nn.MultiheadAttention)
    new.in_proj_weight.requires_grad_(_trains(m.in_proj))
    new.out_proj.weight.requires_grad_(_trains(m.out_proj))
    pairs = [((m.in_proj, "bias"), new.in_proj_bias), ((m.out_proj, "bias"), new.out_proj.bias),
             ((m, "bias_k"), new.bias_k), ((m, "bias_v"), new.bias_v)]  # fmt: skip
    for (owner, name), dst in pairs:
        if getattr(owner, name) is not None and dst is not None:
            dst.requires_grad_(_grads(owner, name))


def _dense_twin(m: nn.Module) -> nn.Module:
    fac = _factory(m)
    with torch.no_grad():
        if isinstance(m, DCTpSLinear):
            # skip_init: every value is copied below, and initialising them first advanced the
            # caller's global RNG (on the layer's device) at each to_dense
            new: Any = skip_init(
                nn.Linear, m.in_features, m.out_features, m.bias is not None, **fac
            )
            new.weight.copy_(m.dense_weight())
        elif isinstance(m, DCTpSConv2d):
            new = skip_init(
                nn.Conv2d, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                m.dilation, m.groups, m.bias is not None, **fac,
            )  # fmt: skip
            new.weight.copy_(m.dense_weight())
        elif isinstance(m, DCTpSMultiheadAttention):
            new = skip_init(
                nn.MultiheadAttention, m.embed_dim, m.num_heads, m.dropout,
                bias=m.in_proj.bias is not None, add_bias_kv=m.bias_k is not None,
                add_zero_attn=m.add_zero_attn,
                batch_first=m.batch_first, **fac,
            )  # fmt: skip
            new.in_proj_weight.copy_(m.in_proj.dense_weight())
            new.out_proj.weight.copy_(m.out_proj.dense_weight())
            if m.in_proj.bias is not None:
                new.in_proj_bias.copy_(m.in_proj.bias)
            if m.out_proj.bias is not None:
                new.out_proj.bias.copy_(m.out_proj.bias)
            if m.bias_k is not None:
                new.bias_k.copy_(m.bias_k)
                new.bias_v.copy_(m.bias_v)
        else:  # pragma: no cover - callers pass DCTpS modules only
            raise DctpsError(f"not a DCTpS module: {type(m).__name__}")
        if isinstance(m, DCTpSLayer) and m.bias is not None:
            new.bias.copy_(m.bias)
    if isinstance(m, DCTpSLayer):  # `is_residual`, a subclass's `scale`: as sparsify kept them
        for k, v in own_attributes(m).items():
            setattr(new, k, copy.deepcopy(v))
    _copy_requires_grad(m, new)
    new.train(m.training)
    move_hooks(m, new, copy=True)  # "the same outputs": a hook that changes them comes along
    # ... but not torch.nn.utils.prune's hooks on the layer's own values/alpha/bias: the copied
    # weight and bias hold their masks already, and the plain layer has no <name>_orig/_mask
    for key, hook in list(new._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod):
            del new._forward_pre_hooks[key]
    return new


def _pruned_copies(model: nn.Module) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo that copies each pruned ``module.<name>`` of ``model`` (a
    non-leaf ``<name>_orig * <name>_mask`` after a forward with grad, which deepcopy refuses
    where torch's own pruning methods applied it) as a graph-free clone; ``model`` itself is
    not touched (it used to get graph-free weights, and a loss on ``module.weight`` before its
    next forward then trained nothing)."""
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for module in model.modules():
            for name in [n for n in module._parameters if n.endswith("_orig")]:
                t = module.__dict__.get(name.removesuffix("_orig"))
                if isinstance(t, torch.Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach().clone()
    return memo


@overload
def to_dense(model: DCTpSLinear) -> nn.Linear: ...  # type: ignore[overload-overlap]
@overload
def to_dense(model: DCTpSConv2d) -> nn.Conv2d: ...  # type: ignore[overload-overlap]
@overload
def to_dense(model: DCTpSMultiheadAttention) -> nn.MultiheadAttention: ...  # type: ignore[overload-overlap]
@overload
def to_dense(model: ModuleT) -> ModuleT: ...
def to_dense(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in plain PyTorch: every DCTpS layer becomes ``nn.Linear`` /
    ``nn.Conv2d`` holding the fused ``W = alpha * D + S`` (and a DCTpSMultiheadAttention an
    ``nn.MultiheadAttention``), so it runs and exports (ONNX, TorchScript) without dctps and gives
    the same outputs. ``model`` is not modified. A model pruned with ``dctps.pruning.prune``
    keeps its ``torch.nn.utils.prune`` structure (masks and their hooks, including the one that
    lets an attention recompute its pruned ``out_proj``); ``prune.remove`` makes it plain, and
    ``torch.jit.script`` needs that first (it fails on any ``torch.nn.utils.prune`` model with
    "'Mask' object has no attribute '__name__'"; tracing, ``torch.export`` and ONNX do not).

    The fused weights are contiguous: a DCTpS layer holds no 4-D weight, so nothing records
    that ``model.to(memory_format=torch.channels_last)`` was called on it. Call it again on
    the result to deploy channels-last."""
    check_module(model, "to_dense")
    if isinstance(model, (DCTpSLayer, DCTpSMultiheadAttention)):
        return _dense_twin(model)
    try:
        out = copy.deepcopy(model, _pruned_copies(model))
    except RuntimeError as e:
        if "deepcopy protocol" not in str(e):
            raise
        raise DctpsError(_uncopyable(model)) from None
    strip(out)  # no dctps hook may stay on the plain model
    names = _all_names(out)
    for _, m in _dctps_modules(out):
        _check_support(m)
        twin = _dense_twin(m)
        for alias in names[id(m)]:  # a module registered twice stays one module (tied)
            set_submodule(out, alias, twin)
    return out


def _uncopyable(model: nn.Module) -> str:
    """Why ``copy.deepcopy`` refused ``model``: torch copies only leaf tensors, and the old
    ``torch.nn.utils.weight_norm`` holds its computed weight as a plain attribute."""
    from dctps.sparsify import reparametrisation

    for name, m in model.named_modules():
        for attr in ("weight", "in_proj_weight"):
            found = reparametrisation(m, attr)
            if found and found[0] == "torch.nn.utils.weight_norm":
                return (
                    f"to_dense copies the model, and torch cannot copy layer {name or '(root)'!r}: "
                    f"its {attr} is computed by the old torch.nn.utils.weight_norm. Use "
                    "torch.nn.utils.parametrizations.weight_norm instead, or call "
                    "torch.nn.utils.remove_weight_norm(module) first"
                )
    return (
        "to_dense copies the model, and torch cannot copy it: it holds a tensor that is not a "
        "graph leaf as an attribute (an old-style weight_norm, or a tensor computed with grad "
        "and stored on a module); detach it or compute it in forward"
    )


def note_supports(model: ModuleT) -> ModuleT:
    """Record the current support of every DCTpS layer of ``model`` as one dctps set
    (:meth:`~dctps.layers.DCTpSLayer.note_support`), and return ``model``.

    :func:`save` and :func:`to_dense` refuse a layer whose ``indices`` buffer was written in
    place since dctps set it (its constructor, ``load_state_dict``, ``reset_parameters``,
    RigL), as an EMA writes it into positions its values do not belong to. Call this after a
    write that brings each support with its own values: DDP's broadcast of rank 0's buffers
    to an unseeded model, an in-place load (``torch.distributed.checkpoint``), a ``copy_`` of
    a state dict. Not for an EMA's copy: its averaged values belong to no one support. A
    support that is none (positions unsorted, repeated or out of range) is refused, naming
    the layer; the layers before it are recorded."""
    from dctps.layers import UNINITIALISED, _check_loaded_support

    check_module(model, "note_supports")
    for name, layer in model.named_modules():
        if isinstance(layer, DCTpSLayer):
            if UNINITIALISED not in layer.__dict__:  # to_empty() garbage: reset_parameters()
                # accepted as is before, then run silently in an eval forward
                prefix = f"{name}." if name else ""
                _check_loaded_support(layer, layer.indices, layer.values, prefix, "note_supports")
            layer.note_support()
    return model


def _check_support(m: nn.Module) -> None:
    """A :class:`DctpsError` for a DCTpS module whose support is no longer one (sorted,
    distinct, in range), or is another than dctps last set (:func:`support_fingerprint`):
    ``AveragedModel(use_buffers=True)`` averages the integer ``indices`` like any buffer, and
    writing or exporting such a model silently used another support. An average of sorted
    supports is itself sorted and distinct (supports RigL moved, averaged by an EMA): only
    the fingerprint tells it."""
    from dctps.layers import SUPPORT_FINGERPRINT, _check_loaded_support, support_fingerprint

    for layer in m.modules():
        if not isinstance(layer, DCTpSLayer):
            continue
        layer._check_initialised()  # to_empty() garbage: that message, not this one
        cause = (
            "was its integer `indices` buffer averaged or written (e.g. by AveragedModel with "
            "use_buffers=True, which averages every buffer; use its default use_buffers=False)?"
        )
        try:
            _check_loaded_support(layer, layer.indices, layer.values, "")
        except DctpsError as e:
            raise DctpsError(
                f"{type(layer).__name__}'s support is not a support any more ({e}); {cause}"
            ) from None
        noted = layer.__dict__.get(SUPPORT_FINGERPRINT)
        if noted is not None and noted != support_fingerprint(layer.indices):
            raise DctpsError(
                f"{type(layer).__name__}'s support is not the one dctps set: its integer "
                "`indices` buffer was written in place since. An EMA does that: AveragedModel "
                "with use_buffers=True averages it into positions its values do not belong to, "
                "and with use_buffers=False copies the live model's, whose RigL-moved support "
                "its averaged values do not fit either: save the live model. A DDP broadcast, "
                "an in-place load (torch.distributed.checkpoint) or a copy_ of a state dict "
                "writes a support together with its values: then call "
                "dctps.note_supports(model) first"
            )
