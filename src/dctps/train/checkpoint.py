"""Atomic, resumable training checkpoints.

A run folder holds ``last.pt`` (the newest checkpoint) and ``prev.pt`` (the one before). Writing
first writes the new checkpoint completely to a temporary file in the same folder (``fsync``),
then rotates ``last.pt`` to ``prev.pt`` and renames the temporary file to ``last.pt``
(``os.replace``), so a crash at any moment leaves at least one complete checkpoint (between the
two renames only ``prev.pt``). Loading tries ``last.pt`` and falls back to ``prev.pt`` (with a
warning) when it is missing or unreadable.

A checkpoint is a dict of tensors and plain Python values (loaded with ``weights_only=True``):
``format``, ``version``, ``config_hash``, ``config``, ``epoch`` (completed epochs), ``model`` (the
model's ``state_dict``: sparse for DCTpS layers, ``weight_orig``/``weight_mask`` for pruned ones),
``optimizer``, ``scheduler``, ``rng`` (torch CPU/CUDA and loader generator states), ``best``
(``state``, ``epoch``, ``val_acc``, ``val_loss``), ``history`` (per-epoch metrics), ``rigl``, and
``elapsed`` (seconds trained so far), ``prune_seconds``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import warnings
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dctps.atomic import create_temp, replace, unlink_quietly
from dctps.errors import DctpsError, cannot_write, is_count, one_line, user_path

__all__ = [
    "FORMAT",
    "model_from_checkpoint",
    "read_run_checkpoint",
    "pack_sparse",
    "unpack_sparse",
    "LAST",
    "PREV",
    "atomic_save",
    "exists",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "dctps-train-checkpoint"
#: the layout of a train checkpoint: 1 the first; 2 its ``optimizer`` and ``best`` entries packed
#: (:func:`pack_sparse`; a reader of 2 reads 1). A newer one is refused, not misread.
VERSION = 2
LAST = "last.pt"
PREV = "prev.pt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Delete temporary files a killed writer of ``folder/name`` left behind (the run lock makes
    this process the folder's only writer)."""
    for p in folder.glob(f".{name}.*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


def _write_temp(obj: Any, path: Path) -> str:
    """``torch.save(obj)`` to a complete, fsynced temporary file beside ``path``; its name.

    Raises :class:`DctpsError` (naming ``path``) when the write fails, e.g. on a full disk; no
    temporary file is left then.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path.parent, path.name)
        fd, tmp = create_temp(path)
    except OSError as e:
        raise cannot_write("checkpoint", path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        unlink_quietly(tmp)
        # Ctrl-C or a full disk inside torch.save surface as torch's RuntimeError from its zip
        # writer's cleanup ("unexpected pos ..."), the real cause in its context: report that
        stop = _cause(e, KeyboardInterrupt)
        if stop is not None:
            raise type(stop)() from None  # Ctrl-C, or SIGTERM (dctps.train.Terminated)
        os_error = _cause(e, OSError)
        if os_error is not None:
            raise cannot_write("checkpoint", path, os_error) from None
        raise
    return tmp


def _cause(e: BaseException, kind: type[BaseException]) -> Any:
    """``e``, or the exception it was raised while handling, that is a ``kind``; else ``None``."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__context__
    return None


def _replace(src: str | Path, dst: Path) -> None:
    try:
        replace(src, dst)
    except OSError as e:
        raise cannot_write("checkpoint", dst, e) from None


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder + fsync + replace.

    ``path`` holds either its old content or the complete new one at every moment; a failed
    write (a full disk) raises :class:`DctpsError` and leaves the old ``path`` as it was.
    """
    path = Path(path)
    tmp = _write_temp(obj, path)
    try:
        _replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


#: the marker key of a tensor stored by :func:`pack_sparse`
PACKED = "__dctps_packed__"
#: :func:`pack_sparse` stores a tensor of at least this many elements, at most this fraction of
#: them non-zero, as indices and values
PACK_MIN_NUMEL = 4096
PACK_MAX_DENSITY = 0.25
#: the entries of a ``last.pt`` that :func:`save_checkpoint` packs; ``model`` stays a plain state
#: dict, as ``torch.load(CKPT)['model']`` users expect
PACKED_ENTRIES = ("optimizer", "best")


def pack_sparse(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with each tensor of at least
    :data:`PACK_MIN_NUMEL` elements of which at most :data:`PACK_MAX_DENSITY` are non-zero
    replaced by ``{PACKED: 1, "shape": [...], "index": int32/int64 flat positions, "values": ...}``.
    Lossless: a NaN and a ``-0.0`` count as non-zero, so :func:`unpack_sparse` gives back the
    same bits (pruning and RigL zero with ``+0.0`` for this). A pruned network's optimizer state
    (zero off its masks) and the copy of its best model shrink about 100x at 1% density (a
    pruned ResNet18's ``last.pt``: 201 MB -> 59 MB)."""
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.numel() < PACK_MIN_NUMEL or obj.is_complex():
            return obj
        flat = obj.detach().reshape(-1)
        keep = flat != 0  # NaN included
        if flat.is_floating_point():
            keep |= torch.signbit(flat)  # -0.0 too: the same bits back
        n = int(keep.sum())
        if n > PACK_MAX_DENSITY * flat.numel():
            return obj
        index = keep.nonzero().squeeze(1)
        values = flat[index]
        if flat.numel() < 2**31:
            index = index.to(torch.int32)
        return {PACKED: 1, "shape": list(obj.shape), "index": index, "values": values}
    if isinstance(obj, dict):
        return {k: pack_sparse(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _same_sequence(obj, [pack_sparse(v) for v in obj])
    return obj


def _same_sequence(like: list | tuple, items: list[Any]) -> Any:
    """``items`` as ``like``'s type (a namedtuple takes them as arguments)."""
    if hasattr(like, "_fields"):
        return type(like)(*items)
    return type(like)(items)


def unpack_sparse(obj: Any, shapes: Collection[tuple[int, ...]] | None = None) -> Any:
    """The inverse of :func:`pack_sparse` (plain objects come back as they are).

    With ``shapes``, a packed tensor must have one of them: a checkpoint packs only optimizer
    states and model copies, which have the shapes of its model's tensors. A crafted entry
    declaring a huge shape would otherwise allocate it (1.5 GB from a 42 KB file)."""
    if isinstance(obj, dict):
        if obj.get(PACKED) == 1 and isinstance(obj.get("values"), torch.Tensor):
            values, index = obj["values"], obj.get("index")
            shape: Any = obj.get("shape")
            ok_shape = isinstance(shape, (list, tuple)) and all(map(is_count, shape))
            numel = math.prod(shape) if ok_shape else 0
            if not (
                ok_shape
                and isinstance(index, torch.Tensor)
                and not index.is_floating_point()
                and index.shape == values.shape == (values.numel(),)
                and (index.numel() == 0 or (int(index.min()) >= 0 and int(index.max()) < numel))
            ):
                raise ValueError(f"a packed tensor of shape {shape!r} whose entries do not fit it")
            if shapes is not None and tuple(shape) not in shapes:
                raise ValueError(
                    f"a packed tensor of shape {list(shape)} that no tensor of its model has"
                )
            out = torch.zeros(numel, dtype=values.dtype)
            out[index.long()] = values
            return out.reshape(shape)
        return {k: unpack_sparse(v, shapes) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _same_sequence(obj, [unpack_sparse(v, shapes) for v in obj])
    return obj


def _model_shapes(obj: Mapping[str, Any]) -> set[tuple[int, ...]]:
    """The shapes of the tensors of a checkpoint's ``model`` state (never packed): the only
    shapes its packed entries may have (:func:`unpack_sparse`)."""
    model = obj.get("model")
    if not isinstance(model, Mapping):
        return set()
    return {tuple(t.shape) for t in model.values() if isinstance(t, torch.Tensor) and _stored(t)}


def _stored(t: torch.Tensor) -> bool:
    """Whether the file holds every element of ``t``: a crafted ``model`` entry may be a
    stride-0 view of one element (``torch.zeros(1).expand(N)``), whose shape would admit a
    packed entry of N elements (1.5e9 from a 2 KB file). A model's own tensors are stored."""
    try:
        return t.untyped_storage().nbytes() >= t.numel() * t.element_size()
    except (RuntimeError, NotImplementedError):  # no storage (a meta or wrapper tensor)
        return False


def save_checkpoint(state: dict[str, Any], folder: str | os.PathLike[str]) -> Path:
    """Write ``state`` as ``folder/last.pt``, keeping the previous ``last.pt`` as ``prev.pt``.

    The new checkpoint is written completely (temp file + fsync) before anything is rotated, so
    a crash or a full disk at any moment leaves the two newest complete checkpoints in place.
    Its :data:`PACKED_ENTRIES` are stored by :func:`pack_sparse`; the readers of this module
    unpack them.
    """
    folder = Path(folder)
    last = folder / LAST
    state = {k: pack_sparse(v) if k in PACKED_ENTRIES else v for k, v in state.items()}
    state = {"format": FORMAT, "version": VERSION, **state}
    tmp = _write_temp(state, last)
    try:
        if last.exists():
            _replace(last, folder / PREV)
        _replace(tmp, last)
    except BaseException:
        unlink_quietly(tmp)
        raise
    _fsync_dir(folder)
    return last


def drop_backup(folder: str | os.PathLike[str]) -> None:
    """Remove ``folder/prev.pt`` of a finished run: it only guards against a torn ``last.pt``
    while the run still resumes, and a done run never resumes (a third of its checkpoint bytes:
    about 200 MB for a pruned ResNet18). Never raises: the run is done either way."""
    with contextlib.suppress(OSError):
        (Path(folder) / PREV).unlink(missing_ok=True)


#: the suffix a retried run's discarded checkpoints get (:func:`set_aside`)
SET_ASIDE = ".before-retry"


def set_aside(folder: str | os.PathLike[str]) -> list[Path]:
    """Rename ``folder``'s ``last.pt`` and ``prev.pt`` to ``<name>.before-retry`` (replacing
    those of an earlier retry), and return the new paths: a run started over (``sweep
    --retry-failed``) must not resume from them later, nor fall back to them, and the failed
    attempt's files are kept, not deleted."""
    folder = Path(folder)
    moved = []
    for name in (LAST, PREV):
        src = folder / name
        if src.exists():
            dst = folder / (name + SET_ASIDE)
            replace(src, dst)
            moved.append(dst)
    if moved:
        _fsync_dir(folder)
    return moved


def exists(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a ``last.pt`` or ``prev.pt``."""
    folder = Path(folder)
    return (folder / LAST).exists() or (folder / PREV).exists()


#: errors of the system, not of a file's contents: too many open files, no memory, an
#: interrupted or refused read, a failing disk
_SYSTEM_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.EIO,
                  errno.EACCES, errno.EPERM}  # fmt: skip


def _system_failure(e: BaseException) -> bool:
    """Whether ``e`` says the system could not read a file now, rather than that the file is
    damaged (a damaged zip archive can raise ``OSError(EINVAL)`` from a seek). torch's own
    allocator raises a ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory", "CUDA out
    of memory") where Python would raise ``MemoryError``: a good ``last.pt`` unpacked under a
    memory limit was set aside as damaged."""
    if isinstance(e, RuntimeError) and (
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower()
    ):
        return True
    return isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno in _SYSTEM_ERRNOS)


def _bad_record(z: zipfile.ZipFile) -> str | None:
    """The first record of ``z`` whose data fail their CRC-32 (``zipfile`` checks it as a
    record is read to its end), or ``None``. Records stored with a CRC of 0 are not checked:
    ``torch.serialization.set_crc32_options(False)`` writes them so, and ``torch.load`` reads
    them."""
    for info in z.infolist():
        if info.CRC == 0:
            continue
        try:
            with z.open(info) as f:
                while f.read(1 << 24):
                    pass
        except zipfile.BadZipFile:
            return info.filename
    return None


def check_archive(path: Path) -> None:
    """A ``ValueError`` for a ``torch.save`` zip archive with a damaged record: ``torch.load``
    does not check the records' CRC-32s, so a flipped byte in a tensor loaded silently (a run
    resumed from such a ``last.pt`` finished with other accuracies and no warning), nor for
    a pickle that calls ``_codecs`` (:func:`_calls_codecs`). A file that is not a zip archive
    is refused: dctps writes checkpoints with ``torch.save``, whose archives are zips since
    torch 1.6, and the legacy format could not be checked so."""
    if Path(path).is_dir():  # is_zipfile says False: "not a zip archive" hid the cause
        raise ValueError("a folder, not a file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            "not a zip archive (torch.save's format since torch 1.6, in which dctps writes its "
            "checkpoints)"
        )
    try:
        with zipfile.ZipFile(path) as z:
            bad = _bad_record(z)
            codecs = bad is None and _calls_codecs(z)
    except OSError as e:
        if _system_failure(e):
            raise
        raise ValueError(f"a damaged zip archive ({one_line(e)})") from None  # a bad seek
    except (zipfile.BadZipFile, EOFError, KeyError) as e:  # KeyError: zipfile's own, e.g. 88
        raise ValueError(f"a damaged zip archive ({one_line(e)})") from None
    if bad is not None:
        raise ValueError(f"its record {bad} fails its CRC check (the file is damaged)")
    if codecs:
        raise ValueError(
            "its pickle calls _codecs.encode (or cannot be checked for it), which a dctps "
            "checkpoint never does (it holds no bytes objects) and which torch's weights_only "
            "loader allows with any codec: a chain of 'hex' encodings in a few hundred bytes "
            "asks for terabytes"
        )


def _calls_codecs(z: zipfile.ZipFile) -> bool:
    """Whether a pickle of a ``torch.save`` archive calls ``_codecs`` (``GLOBAL`` of
    protocols 2-3, or ``STACK_GLOBAL`` whose module string is ``_codecs``), or cannot be
    checked (a pickle :func:`pickletools.genops` cannot read, two records of one name: torch
    reads the first, ``zipfile`` by name the last). Every ``.pkl`` record is read, by its
    entry: torch loads ``<folder of the first record>/data.pkl``, which a decoy record listed
    before it could hide from a check of the first name. Found without unpickling."""
    names = [info.filename for info in z.infolist()]
    if len(set(names)) != len(names):
        return True
    for info in z.infolist():
        if info.filename.endswith(".pkl"):
            with z.open(info) as f:
                if info.CRC == 0:  # torch.serialization.set_crc32_options(False): no CRC to check
                    f._expected_crc = None  # type: ignore[attr-defined]
                if _pickle_calls_codecs(f.read()):
                    return True
    return False


def _pickle_calls_codecs(data: bytes) -> bool:
    """:func:`_calls_codecs` for one pickle. ``STACK_GLOBAL`` takes its module and name from
    the stack: the strings pushed last (or fetched from the memo), tracked here; a config value
    that is the string ``"_codecs"`` is no call."""
    import pickletools

    pushed: list[Any] = []  # what the opcodes pushed, strings as themselves (enough here)
    memo: dict[int, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "GLOBAL" and isinstance(arg, str) and arg.split(" ")[0] == "_codecs":
                return True
            if name == "STACK_GLOBAL":
                if len(pushed) >= 2 and pushed[-2] == "_codecs":
                    return True
                pushed.append(None)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1] if pushed else None  # type: ignore[arg-type]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg)))  # type: ignore[arg-type]
            else:
                pushed.append(arg if isinstance(arg, str) else None)
    except Exception:  # noqa: BLE001 - not a pickle genops reads: not one to load unchecked
        return True
    return False


def _check_version(obj: Mapping[str, Any], path: Path) -> None:
    """A :class:`DctpsError` for a checkpoint of a layout newer than :data:`VERSION`: written
    by a newer dctps, it is not damaged and must be neither misread nor set aside."""
    v = obj.get("version", 1)
    if not is_count(v) or v < 1:
        raise ValueError(f"its version {v!r} is not a version number")
    if v > VERSION:
        raise DctpsError(
            f"{path} was written by a newer dctps (train checkpoint version {v}; this dctps "
            f"reads versions up to {VERSION}); it is left as it is: upgrade dctps to read it"
        )


def _read(path: Path) -> dict[str, Any]:
    check_archive(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError("not a dctps training checkpoint")
    _check_version(obj, path)
    for key in ("config_hash", "epoch", "model"):
        if key not in obj:
            raise ValueError(f"missing key {key!r}")
    return unpack_sparse(obj, _model_shapes(obj))


def checkpoints_in(folder: Path) -> str:
    """What to give instead of ``folder``: its ``best.pt``, or those of the runs under it (a
    results folder holds them at ``runs/<hash>/best.pt``), else what a checkpoint is."""
    found = [folder / "best.pt"] if (folder / "best.pt").is_file() else []
    if not found:
        found = sorted(folder.glob("*/best.pt"))[:3] or sorted(folder.glob("runs/*/best.pt"))[:3]
    if found:
        more = ", ..." if len(found) == 3 else ""
        return "give a file, e.g. " + ", ".join(str(p) for p in found) + more
    return "give a file (a run's runs/<hash>/best.pt, or a dctps.save file)"


def read_run_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``dctps train`` checkpoint (a run's ``best.pt``, ``last.pt`` or ``prev.pt``) as a dict.

    Raises:
        DctpsError: ``path`` cannot be read, or holds no run config and model state.
    """
    from dctps.checkpoint_io import MAGIC

    path = user_path(path, "the checkpoint path")
    if not path.exists():
        raise DctpsError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise DctpsError(f"{path} is a folder, not a checkpoint: {checkpoints_in(path)}")
    if not path.is_file():  # a FIFO or a device: reading it would wait or never end
        raise DctpsError(f"{path} is not a regular file, so not a dctps train checkpoint")
    with open(path, "rb") as f:
        head = f.read(max(len(MAGIC), 4))
    if head.startswith(MAGIC):
        raise DctpsError(
            f"{path} is a sparse checkpoint (dctps.save), not a dctps train checkpoint: "
            "read it with dctps.load or dctps inspect"
        )
    # torch.save writes a zip file (a pickle before torch 1.6, which check_archive refuses
    # by name); a text file is neither
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):
        raise DctpsError(
            f"{path} is not a dctps train checkpoint (not a torch.save file): give a run's "
            "best.pt or last.pt"
        )
    try:
        check_archive(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, damaged, not a torch file, not ours
        why = one_line(e)
        if "weights only load failed" in why.lower():
            # torch's own advice (weights_only=False) would run arbitrary code from the file
            why = f"{type(e).__name__}: it holds objects other than tensors and plain values"
        raise DctpsError(
            f"cannot read {path} as a dctps train checkpoint (truncated or not one): {why}"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict) or "model" not in obj:
        raise DctpsError(
            f"{path} is a torch.save file, not a dctps train checkpoint (it has no run config "
            "and model state)"
        )
    try:
        _check_version(obj, path)
        return unpack_sparse(obj, _model_shapes(obj))
    except DctpsError:  # a newer dctps's file: said as it is
        raise
    except (ValueError, RuntimeError, TypeError) as e:  # a crafted or mis-written entry
        raise DctpsError(f"{path} is not a usable dctps train checkpoint: {one_line(e)}") from None


def _training_only_hashes(cfg: Any, stored: Mapping[str, Any]) -> set[str]:
    """The hashes ``cfg`` (resolved from the ``stored`` config dict) had before changes that
    altered how runs are identified or trained but not the model a checkpoint holds: DCTpS
    supports seeded per layer by ``SeedSequence`` (:data:`dctps.sparsify.SUPPORT_REVISION`; a
    checkpoint holds its own support), an architecture's learning-rate factors
    (:func:`dctps.models.lr_factors`), and a ``subset`` as large as the data set, which now
    resolves to none, method options as stored before their canonical form (an option at
    its default left out, ``exclude`` a sorted list), and fixed per-channel alphas charged to
    ``S``'s budget (``charge_alpha`` left at its default). Such a checkpoint's model is still
    exactly the one that was trained."""
    import itertools

    from dctps.train.config import identity_hash

    ident = cfg.identity()
    markers = [("sparsity", "support_revision"), ("sparsity", "path_check"),
               ("optim", "lr_factors")]  # fmt: skip
    present = [(sec, key) for sec, key in markers if key in ident[sec]]
    subsets = [ident["data"].get("subset")]
    raw = (stored.get("data") or {}).get("subset")
    if raw is not None and subsets[0] is None:
        subsets.append(raw)
    options = [ident["sparsity"].get("options")]
    raw_options = (stored.get("sparsity") or {}).get("options")
    if isinstance(raw_options, dict) and raw_options != options[0]:
        options.append(raw_options)
    out = set()
    for subset, opts in itertools.product(subsets, options):
        for mask in range(2 ** len(present)):  # every subset of the markers dropped
            trimmed = {sec: dict(v) if isinstance(v, dict) else v for sec, v in ident.items()}
            trimmed["data"]["subset"] = subset
            trimmed["sparsity"]["options"] = opts
            for i, (sec, key) in enumerate(present):
                if mask >> i & 1:
                    del trimmed[sec][key]
            out.add(identity_hash(trimmed))
            s = trimmed["sparsity"]
            if s.get("charge_alpha") is False and s.get("train_alpha") is False:
                # fixed per-channel alphas, charged to S before they were not: such a run's
                # checkpoint holds its (smaller) support, which the load takes
                out.add(identity_hash({**trimmed, "sparsity": {
                    k: v for k, v in s.items() if k != "charge_alpha"}}))  # fmt: skip
    return out


def model_from_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved in a ``dctps train`` checkpoint, rebuilt from the run config it holds
    (the architecture, then its DCTpS layers or pruning masks), with the saved state loaded; and
    the checkpoint dict, with the run's sparsity ``method`` added. Needs no data: only the data
    set's name and shape, from the config."""
    from dctps import data
    from dctps.models import REVISIONS
    from dctps.train.config import RunConfig
    from dctps.train.setup import model_to_load, restore_structure

    obj = read_run_checkpoint(path)
    cfg = RunConfig.from_dict(obj["config"], source=str(path)).resolve()
    revision = REVISIONS.get(cfg.model.name, 1)
    if revision > 1 and obj.get("config_hash") not in {
        None,
        cfg.config_hash(),
        *_training_only_hashes(cfg, obj["config"]),
    }:
        # a revised architecture (VGG19 revision 2) whose config hashes differently today: its
        # weights may belong to the old network. An architecture never revised builds the
        # network its weights were trained in, whatever else changed how runs are identified
        # (an upgrade review: such checkpoints were refused, blaming a model that never changed)
        raise DctpsError(
            f"{path} was written by an older dctps for run {obj['config_hash']}; this version "
            f"identifies that config as run {cfg.config_hash()}, of {cfg.model.name} revision "
            f"{revision} (dctps.models.REVISIONS), so its weights may be those of an earlier "
            "revision. Use the dctps version that wrote it"
        )
    obj["method"] = cfg.sparsity.method
    model = model_to_load(cfg, data.get_info(cfg.data.dataset))
    with torch.random.fork_rng(devices=[]):  # a pruned structure's masks are drawn, then loaded
        restore_structure(model, cfg, obj["model"])
    try:
        model.load_state_dict(obj["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        lines = [s.strip() for s in str(e).strip().splitlines()]
        raise DctpsError(
            f"{path}: its model state does not match the {cfg.model.name} its config describes "
            f"({' '.join(lines[:3])})"
        ) from None
    return model, obj


def load_checkpoint(
    folder: str | os.PathLike[str], config_hash: str | None, quarantine: bool = True
) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (``None`` if there is none).

    Falls back from ``last.pt`` to ``prev.pt`` with a warning when ``last.pt`` is unreadable; with
    ``quarantine`` the unreadable file is renamed to ``last.pt.corrupt`` so the next
    :func:`save_checkpoint` keeps the good ``prev.pt`` instead of rotating the broken file over it.

    Raises:
        DctpsError: a checkpoint belongs to another config (hash mismatch; the message names the
            file), or checkpoint files exist but none can be read.
    """
    folder = Path(folder)
    errors = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            obj = _read(path)
        except DctpsError:  # a newer dctps's file: not damaged, and not to be resumed from
            raise
        except Exception as e:  # truncated, damaged, not ours: try the older one
            if _system_failure(e):
                # the system failed (too many open files, no memory), not the file: setting a
                # good last.pt aside would cost an epoch and park the file for good
                denied = isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM)
                raise DctpsError(
                    f"cannot read checkpoint {path} now ({type(e).__name__}: {e}); it is left "
                    "as it is: "
                    + (
                        "make it readable to this user, then run the same command again"
                        if denied
                        else "run the same command again"
                    )  # fmt: skip
                ) from None
            why = one_line(e, empty="an empty or truncated file")
            fallback = name == LAST and (folder / PREV).exists()
            where = path
            if quarantine and fallback:
                with contextlib.suppress(OSError):
                    replace(path, folder / (LAST + ".corrupt"))
                    where = folder / (LAST + ".corrupt")
            errors.append(f"{where}: {why}")
            moved = f", set aside as {where.name}" if where != path else ""
            warnings.warn(
                f"checkpoint {path} is unreadable ({why}){moved}; "
                + (f"resuming from {folder / PREV}" if fallback else "no older one to resume"),
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if config_hash is not None and obj["config_hash"] != config_hash:
            raise DctpsError(
                f"checkpoint {path} belongs to config {obj['config_hash']}, not {config_hash}; "
                "use another --out folder or delete the file"
            )
        obj["path"] = str(path)
        return obj
    if errors:
        raise DctpsError(
            "no readable checkpoint: " + "; ".join(errors) + f"; delete {folder} to start the "
            "run over"
        )
    return None
