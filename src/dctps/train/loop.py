"""Train one run end to end: ``fit(cfg, out_dir)``.

Data -> model -> sparsity -> epochs of training (validation after each, best-val model kept,
checkpoint after each) -> the best-val model evaluated on test -> one row in the results store.

Tiny ImageNet (no test labels) follows Appendix E.5 instead: it validates on its official val split
and reports the maximum of that accuracy over epochs as ``val_acc``, with no ``test_acc``; the
run's ``reason`` says so (:data:`MAX_VAL_NOTE`), since that number is selected on the split it is
measured on and is not comparable to a held-out test accuracy.

Layout of ``out_dir``::

    out_dir/results.db                 the results store (unless another one is given)
    out_dir/runs/<hash>/config.yaml    the resolved config
    out_dir/runs/<hash>/last.pt        checkpoint after the newest epoch (prev.pt: the one before,
                                       removed once the run is done)
    out_dir/runs/<hash>/best.pt        the best-validation model of a finished run

A run is identified by :meth:`RunConfig.config_hash`. Running a finished config again returns its
stored result and trains nothing; running a config whose folder holds a checkpoint resumes from it
and ends with exactly the metrics of an uninterrupted run (bit-exact on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from dctps import _compat
from dctps import progress as progress_mod
from dctps.errors import (
    CannotWrite,
    DctpsError,
    PruningFailed,
    RunBusy,
    cannot_write,
    one_line,
    show,
    user_path,
    warn_at_caller,
)
from dctps.models import lr_factors
from dctps.train import checkpoint as ckpt_io
from dctps.train import setup as su
from dctps.train.config import (
    UNUSED_CHECKED,
    RunConfig,
    _named,
    _non_default,
    save_config,
    unused_settings,
)
from dctps.train.distributed import DistContext, setup, teardown

if TYPE_CHECKING:
    from dctps.results.store import Store

__all__ = ["MAX_VAL_NOTE", "EpochStats", "evaluate", "fit", "train_one_epoch"]

RUNS_DIR = "runs"

# Stored as the ``reason`` of a finished run whose validation set is the data set's official
# split (Tiny ImageNet, paper protocol): `dctps results` then shows why test_acc is empty and what
# val_acc is.
MAX_VAL_NOTE = (
    "paper protocol (E.5): val_acc = max over epochs on the official val split, selected on "
    "that split; no test labels"
)

# Stored as the ``reason`` of a finished run without a validation split (``--val-fraction 0``):
# `val -` would otherwise read as a failure, and its test accuracy as a selected model's.
NO_VAL_NOTE = "no validation split (val_fraction 0): the last epoch's model was tested, unselected"


@dataclass
class EpochStats:
    """What one training epoch did (summed over ranks)."""

    loss: float
    acc: float
    samples: int
    steps: int
    seconds: float
    data_seconds: float  # time spent waiting for the loader (gather, augment, normalise)
    failed: str | None = None  # reason when a non-finite loss/gradient stopped the epoch

    @property
    def images_per_second(self) -> float:
        """Training throughput of the epoch (``nan`` if it took no measurable time)."""
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def default_check_every(device: torch.device) -> int:
    """Steps between reads of :func:`train_one_epoch`'s non-finite flags: every step on the CPU,
    every 20 on CUDA, where a read waits for the queued work (with RigL also before each of its
    updates, whatever the device)."""
    return 20 if device.type == "cuda" else 1


def _grad_max(params: list[nn.Parameter], device: torch.device | None = None) -> torch.Tensor:
    """``max_p max |grad_p|``: finite iff every gradient is (NaN propagates through the maxima,
    on CUDA too, and no sum can overflow a finite gradient into inf: an L1 norm of finite
    float16 gradients passed 65504 and failed the run).

    ``torch._foreach_norm(grads, inf)`` (as ``clip_grad_norm_`` reduces) takes all dense
    gradients of a device and dtype in a few kernels on CUDA; one reduction per parameter cost
    ResNet18 89 kernel launches per step, about 1 ms of host time on an H100 machine (6% of a
    step). Empty gradients (a layer given no non-zeros) have no entries to check; sparse ones
    (``nn.Embedding(sparse=True)``) are reduced on their values. Without gradients, a zero on
    ``device`` (stacked with the loss's flag there)."""
    dense, parts = [], []
    for p in params:
        g = p.grad
        if g is None or g.numel() == 0:
            continue
        if g.is_sparse:
            v = g.coalesce().values()
            if v.numel():
                parts.append(v.abs().amax())
        elif g.device.type == "cpu":
            # one reduction per tensor: _foreach_norm(inf) runs 11x slower on the CPU (ResNet18:
            # 31.6 ms a step against 2.9 ms; 1.6% of a dense VGG19 step). NaN propagates alike.
            parts.append(
                g.abs().amax() if g.is_complex() else torch.stack(torch.aminmax(g)).abs().amax()
            )
        else:
            dense.append(g)
    if dense:
        parts.extend(torch._foreach_norm(dense, float("inf")))
    if not parts:
        return torch.zeros((), device=device)
    return torch.stack(parts).amax()


def _check_model(model: object, who: str) -> None:
    if not isinstance(model, nn.Module):  # an AttributeError on 'parameters' said nothing
        raise DctpsError(f"{who} needs the model (an nn.Module) first, got {show(model)}")


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    rigl: Any = None,
    ctx: DistContext | None = None,
    bar: Any = None,
    check_every: int | None = None,
) -> EpochStats:
    """One pass over ``loader`` with cross-entropy; stops early on a non-finite loss or gradient.

    The check runs after ``backward`` (so under DDP every rank sees the same all-reduced gradient
    and the ranks stop together) and before ``optimizer.step``. ``check_every`` (default: every
    step on CPU, every 20 on CUDA, to avoid a sync per step) sets how often flags are read; with
    ``rigl`` they are also read before each of its update steps.
    """
    _check_model(model, "train_one_epoch")
    if ctx is None:  # one process, on the model's device
        p0 = next(model.parameters(), None)
        ctx = DistContext(device=p0.device if p0 is not None else torch.device("cpu"))
    model.train()
    device = ctx.device
    if check_every is None:
        check_every = default_check_every(device)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    flags: list[torch.Tensor] = []
    data_s = 0.0
    t0 = time.perf_counter()
    it: Iterator[Any] = iter(loader)
    step = 0
    failed = None
    while True:
        td = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        data_s += time.perf_counter() - td
        step += 1
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        ld = loss.detach()
        gmax = _grad_max(params, ld.device)
        flags.append(torch.stack([~torch.isfinite(ld), ~torch.isfinite(gmax)]))
        # also before each RigL update, which would refuse a non-finite gradient itself (an
        # error) where this check fails the run cleanly; reading every step under RigL waited
        # for each backward on a GPU
        if len(flags) >= check_every or (rigl is not None and rigl.is_update(rigl.t + 1)):
            failed = _first_bad(flags, step, epoch, ctx)
            flags = []
            if failed:
                break
        if rigl is None or rigl.step():
            optimizer.step()
        bs = y.shape[0]
        loss_sum += ld.double() * bs
        correct += (out.detach().argmax(1) == y).sum()
        n += bs
        if bar is not None:
            bar.update(1)
            # the loss is read when the checks were just read (every check_every steps), so
            # the bar adds no synchronisation of its own on a GPU
            if step % max(10, check_every) == 0 or step == 1:
                bar.set_postfix_str(f"loss {loss_sum.item() / n:.3f}", refresh=False)
    if failed is None and flags:
        failed = _first_bad(flags, step, epoch, ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    tot = torch.stack(
        [loss_sum, correct.double(), torch.tensor(float(n), device=device, dtype=torch.float64)]
    )
    ctx.all_reduce_sum(tot)
    samples = int(tot[2].item())
    return EpochStats(
        loss=float(tot[0] / max(samples, 1)),
        acc=float(tot[1] / max(samples, 1)),
        samples=samples,
        steps=step,
        seconds=seconds,
        data_seconds=data_s,
        failed=failed,
    )


def _first_bad(
    flags: list[torch.Tensor], last_step: int, epoch: int, ctx: DistContext
) -> str | None:
    f = torch.stack(flags)  # (k, 2): non-finite loss, non-finite gradient
    if ctx.enabled:
        f = f.to(torch.float32)
        ctx.all_reduce_sum(f)
        f = f > 0
    bad = f.any(1).nonzero()
    if bad.numel() == 0:
        return None
    i = int(bad[0, 0])
    step = last_step - len(flags) + 1 + i
    what = "loss" if bool(f[i, 0]) else "gradient"
    return f"non-finite {what} (NaN/Inf) at epoch {epoch}, step {step}"


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, ctx: DistContext | None = None
) -> tuple[float | None, float | None]:
    """``(mean cross-entropy, accuracy)`` of ``model`` over ``loader`` (summed over ranks).

    Under DDP every rank first takes rank 0's buffers (BatchNorm running statistics), so the
    numbers are those of rank 0's model: the one :func:`fit` saves.
    """
    _check_model(model, "evaluate")
    if loader is None:
        return None, None
    if ctx is None:
        p0 = next(model.parameters(), None)
        ctx = DistContext(device=p0.device if p0 is not None else torch.device("cpu"))
    ctx.broadcast_buffers(model)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    try:
        for x, y in loader:
            out = model(x)
            sums[0] += F.cross_entropy(out, y, reduction="sum").double()
            sums[1] += (out.argmax(1) == y).sum()
            sums[2] += y.shape[0]
    finally:  # a loader's error or a Ctrl-C: the caller's model keeps its mode
        model.train(was_training)
    ctx.all_reduce_sum(sums)
    if sums[2] == 0:
        return None, None
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


# ----------------------------------------------------------------------------- helpers
def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s state, pruning masks as ``bool`` (``compact_masks``)."""
    from dctps.pruning.common import compact_masks

    return compact_masks(
        {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    )


def eval_batch_size(device: torch.device) -> int:
    """The default evaluation batch: 1000 on CUDA; 256 on the CPU, where batches of 1000
    evaluated LeNet-5 40% slower than 256 (the activations leave the caches; a profiling
    review, 5,000 images, one thread: 0.276 s vs 0.164 s)."""
    return 1000 if device.type == "cuda" else 256


def _device_label(device: torch.device) -> str:
    """``'cpu'``, or ``'cuda (<GPU name>)'``: what a checkpoint records of where it was trained
    (another kind of GPU rounds differently too)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _warn_device_change(saved: str | None, now: str, epoch: int) -> None:
    """Warn when a run resumes on another device than its checkpoint was written on: its float
    arithmetic differs (cuDNN's algorithms, TF32, reduction orders), so it goes on as another
    trajectory than the uninterrupted run, under the same run identity."""
    if saved is not None and saved != now:
        warn_at_caller(
            f"resuming after epoch {epoch} on {now}; the checkpoint was written on {saved}: "
            f"the run goes on as another trajectory than on {saved} (give --device, in "
            "Python the config's device, to resume it where it was trained)",
            RuntimeWarning,
        )


def _warn_thread_change(
    saved: int | None, device: torch.device, epoch: int, saved_device: str | None = "cpu"
) -> None:
    """Warn when a CPU run resumes with another number of torch threads than its checkpoint was
    written with: its float sums now split differently, so it goes on as another trajectory
    (weights, accuracy, RigL supports), not as the uninterrupted run would have. Not for a
    checkpoint written on another device (:func:`_warn_device_change` says it; no thread count
    would make that resume bit for bit)."""
    now = torch.get_num_threads()
    if saved_device not in (None, "cpu"):
        return
    if device.type == "cpu" and saved is not None and saved != now:
        warn_at_caller(
            f"resuming after epoch {epoch} with {now} torch thread(s); the checkpoint was "
            f"written with {saved}: the run goes on as another trajectory than with {saved} "
            f"(give --threads {saved}, in Python torch.set_num_threads({saved}), to resume it bit "
            "for bit)",
            RuntimeWarning,
        )


def _warn_setting_change(saved: Any, cfg: RunConfig, device: torch.device, epoch: int) -> None:
    """Warn when a run resumes with settings outside its identity that change its numbers set
    otherwise than its checkpoint's config (``saved``, a dict): ``batched_rebuild`` (another
    order of float operations: the alphas' optimiser moments drift apart) and
    ``eval_batch_size`` (other sums in the validation loss). The hash is the same, so the
    resumed run would pass for the uninterrupted one. Compared as they take effect on the
    resumed ``device`` (``auto`` batches on CUDA only; the device's own default eval batch)."""
    if not isinstance(saved, dict):
        return

    def batched(value: Any) -> bool:
        return value == "on" or (value == "auto" and device.type == "cuda" and dctps_run)

    dctps_run = cfg.sparsity.method == "dctps"
    then = saved.get("batched_rebuild", "auto")
    if dctps_run and batched(then) != batched(cfg.batched_rebuild):
        warn_at_caller(
            f"resuming after epoch {epoch} with --batched-rebuild {cfg.batched_rebuild}; the "
            f"checkpoint was written with {then}: the run goes on as another trajectory (give "
            f"--batched-rebuild {then}, in Python batched_rebuild={then!r}, to resume it bit for "
            "bit)",
            RuntimeWarning,
        )
    eval_then = saved.get("eval_batch_size") or eval_batch_size(device)
    eval_now = cfg.eval_batch_size or eval_batch_size(device)
    if eval_then != eval_now:
        warn_at_caller(
            f"resuming after epoch {epoch} with --eval-batch-size {eval_now}; the checkpoint "
            f"was written with {eval_then}: the validation losses of later epochs round "
            f"otherwise (give --eval-batch-size {eval_then}, in Python "
            f"eval_batch_size={eval_then}, to resume it bit for bit)",
            RuntimeWarning,
        )


def _trains_on_one_image(model: nn.Module, info: Any) -> bool:
    """Whether ``model`` (built on the meta device: no memory, no compute) takes a training
    step's forward on a batch of one image of data set ``info``. BatchNorm cannot where a
    layer sees a single value per channel (one image whose maps have shrunk to 1x1: ResNet18
    on 8x8 digits, not on 32x32 CIFAR)."""
    was = model.training
    model.train()
    try:
        with torch.no_grad():
            model(torch.empty(1, info.in_channels, info.image_size, info.image_size,
                              device="meta"))  # fmt: skip
    except ValueError as e:
        if "more than 1 value per channel" in str(e):
            return False
        raise
    finally:
        model.train(was)
    return True


def _warn_world_change(saved: int | None, now: int, epoch: int) -> None:
    """Warn when a run resumes with another number of DDP processes than its checkpoint was
    written with: each epoch then sees other batches (another split, other partial batches
    dropped) and BatchNorm other statistics, so the result mixes two kinds of run (a review:
    a 2-process run resumed in one process ended 21 points above the 2-process result)."""
    if saved is not None and saved != now:
        warn_at_caller(
            f"resuming after epoch {epoch} with {now} process(es); the checkpoint was written "
            f"by {saved}: the run goes on as another run than with {saved} (launch it with "
            f"{'torchrun --nproc_per_node ' + str(saved) if saved > 1 else 'one process'} to "
            "resume it as it was)",
            RuntimeWarning,
        )


def _rng_state(loader: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "loader": loader.state_dict()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loader: Any) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(state["cuda"])
    loader.load_state_dict(state["loader"])


#: the errors of a lock that another process holds (flock: EWOULDBLOCK; msvcrt: EACCES,
#: EDEADLOCK); any other (ENOSYS on Lustre mounted without flock, ENOLCK on NFS without lockd,
#: ENOTSUP on SMB) says that the file system has no locks, not that the run is busy
_HELD = frozenset(
    getattr(errno, n)
    for n in ("EWOULDBLOCK", "EAGAIN", "EACCES", "EDEADLK", "EDEADLOCK")
    if hasattr(errno, n)
)


def _lock_now(f: Any) -> bool | None:
    """Take an exclusive lock on the open file ``f`` without waiting; ``False`` if another
    process holds it, ``None`` if its file system has no locks. POSIX: ``flock`` on the whole
    file; Windows (no ``fcntl``): ``msvcrt``'s lock on its first byte. The system drops either
    when the process dies."""
    try:
        try:
            import fcntl
        except ImportError:
            msvcrt: Any = importlib.import_module("msvcrt")
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return False if e.errno in _HELD else None
    return True


@contextlib.contextmanager
def _run_lock(folder: Path, prune_parent: bool = False) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` (released when the process dies, even by SIGKILL).

    A run that writes nothing leaves no folder behind: on exit, a folder holding only ``.lock`` is
    removed, while the lock is still held (and with ``prune_parent`` its parent, when that is
    left empty). Another process may have opened that ``.lock`` just before; so after locking, a
    process checks that the path still names the file it locked (same inode), and starts over if
    not; one that finds the folder gone between its ``mkdir`` and its ``open`` makes it again.
    """
    path = folder / ".lock"
    f = None
    for _ in range(100):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileNotFoundError, FileExistsError) as e:
            # another run's exit removed the empty parent (prune_parent) while this mkdir made
            # it, or this folder between its mkdir and its check: make them again
            if not any(p.is_file() for p in (folder, *folder.parents)):
                continue
            raise cannot_write("run folder", folder, e) from None
        except OSError as e:  # --out under a file, read-only, ... (with --db elsewhere)
            raise cannot_write("run folder", folder, e) from None
        try:
            f = open(path, "a+")
        except FileNotFoundError:  # the folder was removed between mkdir and open
            continue
        except OSError as e:
            raise cannot_write("run lock", path, e) from None
        locked = _lock_now(f)
        if locked is None:
            warn_at_caller(
                f"the file system of {folder} does not support file locks: run {folder.name} "
                "trains without one, so nothing stops a second process (another sweep on this "
                "--out) from training it at the same time; put --out on a file system with locks "
                "(a local disk, NFS with lockd, Lustre mounted with -o flock) to have them",
                RuntimeWarning,
            )
            break
        if not locked:
            f.close()
            raise RunBusy(
                f"run {folder.name} is already being trained by another process (lock {path})"
            ) from None
        try:
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break  # the lock is on the file the path names
        except FileNotFoundError:
            pass
        f.close()  # locked a .lock that its owner removed meanwhile: try again
        f = None
    if f is None:  # pragma: no cover - 100 lost races in a row
        raise DctpsError(f"could not lock {path}: it keeps being removed")
    try:
        try:
            yield
        finally:
            try:
                if [p.name for p in folder.iterdir()] == [".lock"]:
                    path.unlink()
                    folder.rmdir()
                    if prune_parent:
                        folder.parent.rmdir()  # fails, as it should, while another run has one
            except OSError:
                pass
    finally:
        f.close()


T = TypeVar("T")


def main_decides(ctx: DistContext, fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only (its result there, ``None`` on the other ranks), its refusal
    shared: a :class:`DctpsError` on rank 0 (a busy run, an unusable store) is raised on every
    rank, which would otherwise fail in their next collective with gloo's traceback beside
    rank 0's one line."""
    result, refusal = None, None
    if ctx.is_main:
        try:
            result = fn()
        except DctpsError as e:
            refusal = e
    if ctx.enabled:
        kinds = (RunBusy, CannotWrite, DctpsError)  # each rank exits as rank 0 (75, 1 or 2)
        said = ctx.broadcast(
            None
            if refusal is None
            else (next(i for i, k in enumerate(kinds) if isinstance(refusal, k)), str(refusal))
        )
        if said is not None and not ctx.is_main:
            kind, message = said
            raise kinds[kind](message)
    if refusal is not None:
        raise refusal
    return result


def _shared_store_locks(store: Any) -> Path | None:
    """The folder of run locks beside a results store (``DB.locks``), or ``None`` for a store
    without a path. Runs of other ``--out`` folders sharing that store would otherwise train
    the same run at once (each run's own lock is in its ``--out``) and overwrite each other's
    rows; a run takes both locks, so a second one is busy. Taken also where the store is in
    the run's own ``--out``: a second process with ``--db OUT/results.db`` beside it trained
    the run again and cleared its learning curve. Removed again when empty."""
    from dctps.results.store import locks_folder

    path = getattr(store, "path", None)
    return locks_folder(path) if isinstance(path, Path) else None


def other_data(
    row: dict[str, Any], data: Any, where: str, memo: dict[tuple[Any, ...], str] | None = None
) -> str | None:
    """Why the finished run ``row`` (a store row) must not stand for a run on ``data`` (a
    :class:`~dctps.train.config.DataConfig`), or ``None`` if it may.

    The data root is not part of a run's identity (one data set may live at several paths), so
    the row records the folder it read (``data_root``) and its data's
    :meth:`~dctps.data.Splits.fingerprint`. Same folder: reused as is. Another folder: its data
    are loaded (once per setting, through ``memo``) and must have the same fingerprint. Rows
    written before fingerprints were recorded, and data whose folder is missing now (nothing to
    compare), are reused as before.
    """
    from dctps import data as data_mod
    from dctps.results.store import sqlite_text

    recorded = row.get("data_fingerprint")
    if not recorded:
        return None
    try:
        root = data_mod.root_of(data.dataset, data.root)
    except DctpsError:
        return None
    if sqlite_text(root) == row.get("data_root"):  # as stored: a Latin-1 name escaped
        return None
    key = (data.dataset, root, data.val_fraction, data.split_seed, data.subset)
    memo = {} if memo is None else memo
    if key not in memo:
        memo[key] = data_mod.build(
            data.dataset, root, val_fraction=data.val_fraction, split_seed=data.split_seed,
            subset=data.subset,
        ).fingerprint()  # fmt: skip
    if memo[key] == recorded:
        return None
    return (
        f"run {row['hash']} ({row.get('status')}) in {where} was trained on other data than "
        f"{data.dataset} at {root} (data fingerprint {recorded} from {row.get('data_root')}, "
        f"now {memo[key]}). The data root is not part of a run's identity, so its result "
        "would stand for these data: give another --out (or --db; fit's out_dir, store) for "
        "them, or remove the run "
        f"(its row: Store(db).delete('{row['hash']}'), and its folder runs/{row['hash']}) to "
        "train it again"
    )


def _start_over(store: Any, h: str, run_dir: Path) -> None:
    """Keep nothing of an earlier attempt in a run that starts from its first epoch (``sweep
    --retry-failed`` passes ``resume=False``): its checkpoints are set aside
    (:func:`~dctps.train.checkpoint.set_aside`: a later resume took them up, mixing the failed
    trajectory into the new one) and its epoch rows removed (they stood beside the new
    attempt's, under a run that failed earlier than they went)."""
    ckpt_io.set_aside(run_dir)
    if store is not None and store.epochs(h):
        store.clear_epochs(h)


def _done_result(
    store: Any, h: str, run_dir: Path, ctx: Any, data: Any = None
) -> dict[str, Any] | None:
    """The stored result of run ``h`` if its row is ``done`` (rank 0 reads the store and decides
    for every rank: all ranks call this), else ``None``. A :class:`DctpsError` for a done row
    trained on other data than ``data`` (:func:`other_data`)."""
    row = store.get(h) if store is not None else None
    done = row is not None and row["status"] == "done"
    why = None
    if row is not None and done and data is not None:
        why = other_data(row, data, str(store.path))
    why, done = ctx.broadcast((why, done))
    if why is not None:
        raise DctpsError(why)
    if not done:
        return None
    return _row_result(row, run_dir, store) if row is not None else {"hash": h, "skipped": True}


def _row_result(row: dict[str, Any], run_dir: Path, store: Any) -> dict[str, Any]:
    from dctps.results.store import METRIC_COLUMNS, row_config

    keys = ("hash", "status", "reason", *METRIC_COLUMNS)
    out = {k: row.get(k) for k in keys}
    hist = store.epochs(row["hash"]) if store is not None else []
    out.update(
        history=hist, epochs=len(hist), run_dir=str(run_dir), skipped=True, resumed_from=None
    )
    try:  # the row keeps no count of fixed alphas; its config says whether alpha trained
        sparsity = row_config(row).get("sparsity", {})
        fixed = sparsity.get("train_alpha") is False
    except (TypeError, ValueError, AttributeError):
        fixed = False
    out["fixed_alphas"] = out.get("alphas") if fixed else 0
    return out


def _store_path(store: Any, out: Path) -> Path | None:
    """The file of the results store :func:`_open_store` opens (``None`` for a ``Store``)."""
    from dctps.results.store import out_db_path

    if store is None:  # the file inside the --out folder, even when the name has a dot
        return out_db_path(out)
    if isinstance(store, (str, os.PathLike)):
        return Path(store)
    return None


def _store_exists(store: Any, out: Path) -> bool:
    """Whether the results store :func:`_open_store` would open already exists (a folder given
    as the store means its ``results.db``, as :class:`~dctps.results.store.Store` reads it)."""
    from dctps.results.store import resolve_db_path

    path = _store_path(store, out)
    return path is None or resolve_db_path(path).is_file()


def _open_store(store: Any, out: Path) -> Any:
    from dctps.results.store import Store

    path = _store_path(store, out)
    return store if path is None else Store(path)


def _bar(total: int, initial: int, enabled: bool, desc: str) -> Any:
    """A bar of the run's steps on a terminal, a line per epoch in a log (:mod:`dctps.progress`)."""
    return progress_mod.make_bar(
        total, desc, "step", initial, enabled, dynamic_ncols=True, leave=True
    )


# ----------------------------------------------------------------------------- fit
def fit(
    cfg: RunConfig,
    out_dir: str | os.PathLike[str],
    store: Store | str | os.PathLike[str] | None = None,
    progress: bool = True,
    resume: bool | None = None,
    *,
    warn: bool = True,
) -> dict[str, Any]:
    """Train the run ``cfg`` into ``out_dir`` and record it in the results store.

    The run seeds torch's global random generators (``cfg.seed``); they are restored for the
    caller when fit returns or raises (the CPU one, and the run's CUDA device's).

    Args:
        cfg: the run config (resolved here: recipe defaults, validation).
        out_dir: output folder; the run lives in ``out_dir/runs/<config hash>``.
        store: a :class:`dctps.results.Store`, a path to a database, or ``None`` for
            ``out_dir/results.db``.
        progress: show tqdm bars on stderr (rank 0 only): the pruning method's iterations, then
            the training steps.
        resume: ``None``: resume from a checkpoint if one exists; ``True``: a checkpoint must
            exist (else :class:`DctpsError`); ``False``: ignore checkpoints and start over.
        warn: warn of settings this run ignores, as ``dctps train`` refuses them (an
            allocation for SNIP, gamma without milestones: :func:`unused_settings`), and of a
            record of this config by an older dctps, which cannot be reused or resumed
            (:func:`dctps.results.store.older_records`): the run is trained anew.
            :func:`dctps.run_sweep` passes ``False``: a grid's base may carry such settings
            for some of its runs, and its plan names the older records.

    Returns:
        A dict with ``hash``, ``status`` (``done`` / ``failed``), ``reason`` (why a run failed; for
        a done run :data:`MAX_VAL_NOTE` or ``None``), ``val_acc`` (best validation accuracy; for
        Tiny ImageNet without a hold-out, the paper's maximum over epochs on its official val
        split), ``test_acc`` (of the best-val model; ``None`` without a test set, e.g. Tiny
        ImageNet without a hold-out), ``best_epoch``, ``weights``, ``nonzeros``,
        ``trainable``, ``alphas`` and ``fixed_alphas`` (:class:`dctps.Counts`; ``None`` but
        ``weights`` for a run whose pruning failed), ``prune_seconds``, ``wall_seconds``,
        ``history`` (per-epoch dicts),
        ``epochs``, ``run_dir``, ``resumed_from`` (epoch or ``None``) and ``skipped`` (the run was
        already done).

    Raises:
        DctpsError: bad config, missing data, a checkpoint of another config, or ``resume=True``
            without a checkpoint. A pruning failure or a non-finite loss is not raised: the run is
            recorded ``failed`` and returned with its reason.
    """
    if not isinstance(cfg, RunConfig):
        raise DctpsError(f"fit needs a RunConfig, got {type(cfg).__name__}")
    from dctps.results import store as store_mod

    if not (store is None or isinstance(store, (str, os.PathLike, store_mod.Store))):
        # it failed at the store's first use, with an AttributeError
        raise DctpsError(
            f"store must be a dctps.results.Store, a path to a results database or None (the "
            f"out folder's results.db), got {type(store).__name__}"
        )
    if resume is not None and not isinstance(resume, bool):  # resume=1 ran as resume=None
        raise DctpsError(
            f"resume must be None (resume a checkpoint if there is one), True (one must exist) "
            f"or False (start afresh), got {show(resume)}"
        )
    chosen, given = _caller_choices(cfg)
    unused = unused_settings(cfg, chosen) if warn else []
    cfg = cfg.resolve()
    o = cfg.optim
    # `dctps train --milestones` refuses it; a config built in Python passed quietly
    late = [m for m in given or [] if m >= (o.epochs or 0)]
    if progress:
        progress_mod.style()  # a bad DCTPS_PROGRESS: refused before the data and the pruning
    ctx = setup(cfg.device)
    if ctx.is_main:  # once, not from every torchrun rank
        for why in unused:
            warn_at_caller(f"{why}; it is ignored", RuntimeWarning)
        if late:
            warn_at_caller(
                f"optim.milestones {late} are not below the run's {o.epochs} epochs: the "
                "learning rate never decays there (give milestones in 1..epochs-1)",
                RuntimeWarning,
            )
    try:
        # the run seeds torch's global generators (its model's initialisation, dropout): the
        # caller's draws after fit follow their own seed, not the run's
        cuda = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            return _fit(cfg, user_path(out_dir, "out_dir"), store, progress, resume, ctx, warn)
    finally:
        teardown(ctx)


def _caller_choices(cfg: RunConfig) -> tuple[list[str], list[int] | None]:
    """Which of :data:`UNUSED_CHECKED` the caller set in ``cfg``, and the milestones it gave:
    those away from their defaults, less what :meth:`RunConfig.resolve` would give them anyway
    (a resolved config, a run's own ``config.yaml``, holds its recipe's gamma and milestones,
    which no caller chose: the sgd recipe's milestones for 1 epoch are ``[1]``)."""
    from dctps.train.config import recipe_defaults

    chosen = _non_default(cfg, UNUSED_CHECKED)
    given = cfg.optim.milestones
    r = cfg.resolve()
    own = recipe_defaults(r.optim.recipe or "", r.sparsity.method, r.optim.epochs)
    if cfg.optim.gamma == own["gamma"] and "gamma" in chosen:
        chosen.remove("gamma")
    if given is not None and tuple(given) == own["milestones"]:
        given = None
    return chosen, given


def _fit(
    cfg: RunConfig,
    out: Path,
    store_arg: Any,
    progress: bool,
    resume: bool | None,
    ctx: DistContext,
    warn: bool = True,
) -> dict[str, Any]:
    from dctps import data as data_mod
    from dctps.results.store import describe_older, older_records
    from dctps.sparsify import count

    h = cfg.config_hash()
    run_dir = out / RUNS_DIR / h
    # a model that cannot take the data set (LeNet-5 on 8x8 digits) fails here, on the meta
    # device (no memory, milliseconds), before a results store or run folder is created
    info0 = data_mod.get_info(cfg.data.dataset)
    shape = su.model_shape(cfg, info0)
    one_image_fails = not _trains_on_one_image(shape, info0)
    # a DCTpS budget that cannot pay for per-channel alphas, a bad exclude pattern: refused here
    # too, not after an empty store and run folder were created
    su.check_budget_on_meta(shape, cfg)
    o = cfg.optim  # resolved by fit
    assert o.batch_size is not None and o.epochs is not None
    if o.batch_size % ctx.world_size:  # before any output, as the other refusals of a config are
        raise DctpsError(
            f"batch_size {o.batch_size} is not divisible by the {ctx.world_size} processes"
        )
    store_existed = _store_exists(store_arg, out)
    # a RigL schedule that never updates, on the official data's step count (never below the
    # loader's): refused before any output too, unless a store holds the run done (recorded
    # before this refusal existed: it stays done); the loader's own count is checked later
    never_updates = None
    try:
        su.check_rigl_schedule(cfg, su.train_steps(cfg))
    except DctpsError as e:
        never_updates = e
        if not store_existed:
            raise
    # a missing data root or data set folder: refused before a new store is created (a store
    # that exists may hold the run done, which needs no data: checked after that look)
    if not store_existed:
        data_mod.check_root(cfg.data.dataset, cfg.data.root)
    store = main_decides(ctx, lambda: _open_store(store_arg, out))

    # ---- already done? (rank 0 decides for everyone)
    done = _done_result(store, h, run_dir, ctx, cfg.data)
    if done is not None:
        if ctx.is_main:  # a run killed between its row's `done` and dropping prev.pt
            ckpt_io.drop_backup(run_dir)
        return done
    if never_updates is not None:
        raise never_updates
    if store_existed:  # before the run folder is created
        data_mod.check_root(cfg.data.dataset, cfg.data.root)

    lock = contextlib.ExitStack()

    def take_locks() -> None:
        try:
            lock.enter_context(_run_lock(run_dir))
            shared = _shared_store_locks(store)
            if shared is not None:
                lock.enter_context(_run_lock(shared / h, prune_parent=True))
        except BaseException:
            lock.close()  # the run folder's lock too, when the store's is busy
            raise

    main_decides(ctx, take_locks)
    with lock:
        # done by another process between the first look and the lock (a sweep beside this
        # one): reopening it would mark its row running and test it again
        done = _done_result(store, h, run_dir, ctx, cfg.data)
        if done is not None:
            return done
        # ---- checkpoint (rank 0 first: it may quarantine a corrupt last.pt)
        ck = None
        if resume is not False:
            # its refusal (no readable checkpoint) raised on every rank: the others got gloo's
            # "Connection closed by peer" traceback beside rank 0's one line
            ck = main_decides(ctx, lambda: ckpt_io.load_checkpoint(run_dir, h))
            if not ctx.is_main:
                ck = ckpt_io.load_checkpoint(run_dir, h, quarantine=False)
        older = None
        if ck is None and ctx.is_main and store is not None and (resume is True or warn):
            older = next(iter(older_records(store, [cfg]).values()), None)
        if resume is True and ck is None:

            def refuse() -> None:
                if older is not None:
                    raise DctpsError(
                        f"--resume (resume=True): no checkpoint for config {h}. The results "
                        f"store holds this config as {describe_older(older)}, but a "
                        "computation of it changed since (see the CHANGELOG), so that run "
                        "cannot be resumed: leave --resume out to train it anew (the old row "
                        "stays, marked recorded_by)"
                    )
                raise DctpsError(
                    f"--resume (resume=True): no checkpoint in {run_dir} for config {h} (a run "
                    "is its whole config: other epochs, density or seed than the stopped run's "
                    "make another run)"
                )

            main_decides(ctx, refuse)  # every rank raises rank 0's reason
        if older is not None:
            warn_at_caller(
                f"run {h} is trained anew: the results store holds this config as "
                f"{describe_older(older)}, but a computation of it changed since (see the "
                "CHANGELOG), so that run cannot be reused or resumed. Its row stays, marked "
                "recorded_by",
                RuntimeWarning,
            )
        if ck is None and (run_dir / "best.pt").is_file():
            # best.pt is written when a run ends: its row and last.pt are gone (a results
            # database moved aside, then last.pt deleted), and training again would replace it
            raise DctpsError(
                f"run {h} finished before: {run_dir / 'best.pt'} holds its model, but the "
                "results store has no row for it and the folder no last.pt to rebuild one "
                "from. Restore the results database (or last.pt) to keep its results, or move "
                "best.pt aside to train the run again"
            )

        # ---- data
        splits = data_mod.build(
            cfg.data.dataset,
            cfg.data.root,
            val_fraction=cfg.data.val_fraction,
            split_seed=cfg.data.split_seed,
            subset=cfg.data.subset,
        )
        info = splits.info
        data_fp = splits.fingerprint()
        data_root = data_mod.root_of(cfg.data.dataset, cfg.data.root)
        if ck is not None and ck.get("data") not in (None, data_fp):
            raise DctpsError(
                f"the checkpoint of run {h} in {run_dir} was trained on other data than "
                f"{cfg.data.dataset} at {cfg.data.root or 'DCTPS_DATA'} gives now (data "
                f"fingerprint {ck['data']}, now {data_fp}; the data root is not part of a run's "
                "identity): resuming would mix the two. Give another --out (fit's out_dir), or "
                "delete the run "
                "folder to train it again on these data"
            )
        saved_eval = ((ck or {}).get("config") or {}).get("eval_batch_size")
        if cfg.eval_batch_size is None and isinstance(saved_eval, int) and saved_eval > 0:
            # a run resumes with the evaluation batch it was written with, where the caller
            # gives none: the CPU's default changed from 1000 to 256, and every resume of an
            # older run warned of a setting its user never chose
            cfg = dataclasses.replace(cfg, eval_batch_size=saved_eval)
        if ck is not None and ck.get("data") is None and ctx.is_main:
            warn_at_caller(
                f"the checkpoint of run {h} in {run_dir} holds no data fingerprint (an older "
                f"dctps wrote it), so whether it trained on the data it now resumes on, "
                f"{cfg.data.dataset} at {data_root}, cannot be checked. If they are not, "
                f"delete {run_dir} to train the run anew on them",
                RuntimeWarning,
            )
        per_rank = o.batch_size // ctx.world_size
        dev, rk, ws = ctx.device, ctx.rank, ctx.world_size
        train_loader = data_mod.Loader(
            splits.train_x,
            splits.train_y,
            per_rank,
            shuffle=True,
            augment=data_mod.default_augment(info),
            info=info,
            generator=torch.Generator().manual_seed(cfg.seed),
            drop_last=ctx.enabled,
            device=dev,
            rank=rk,
            world_size=ws,
        )
        n_train = int(splits.train_x.shape[0])
        if len(train_loader) == 0:
            raise DctpsError(f"the training set ({n_train} images) gives no batch of {per_rank}")
        why_one = (f"{cfg.model.name}'s BatchNorm cannot train on one {info.image_size}x"
                   f"{info.image_size} image (it sees a single value per channel)")  # fmt: skip
        if one_image_fails and per_rank == 1:
            raise DctpsError(
                f"a batch of 1 image per process (batch size {o.batch_size} over "
                f"{ctx.world_size} process(es)): {why_one}; give a larger {_named('batch_size')}"
            )
        if one_image_fails and not ctx.enabled and n_train % per_rank == 1:
            # found here, not by torch's "Expected more than 1 value per channel" at the end
            # of the first epoch (the run left `running`, and every resume failed the same way)
            raise DctpsError(
                f"the training set ({n_train} images) leaves a last batch of 1 image per epoch "
                f"at batch size {per_rank}, and {why_one}: choose a {_named('batch_size')} or "
                f"{_named('subset')} that leaves no such batch"
            )

        # before the row is recorded (a refusal from make_rigl left an `interrupted` row)
        su.check_rigl_schedule(cfg, len(train_loader) * o.epochs)

        def eval_loader(x: torch.Tensor, y: torch.Tensor) -> Any:
            if x.shape[0] == 0:
                return None
            return data_mod.Loader(
                x,
                y,
                cfg.eval_batch_size or eval_batch_size(dev),
                shuffle=False,
                augment=False,
                info=info,
                device=dev,
                rank=rk,
                world_size=ws,
            )

        val_loader = eval_loader(splits.val_x, splits.val_y)
        test_loader = eval_loader(splits.test_x, splits.test_y)  # None: no test set
        note = MAX_VAL_NOTE if splits.val_is_official else None
        if val_loader is None and note is None:
            note = NO_VAL_NOTE

        # ---- model and sparsity
        model = su.build_model(cfg, info).to(dev)
        prune_s: float | None = None
        if ck is not None:
            su.restore_structure(model, cfg, ck["model"])
            model.load_state_dict(ck["model"])
            model.to(dev)
            prune_s = ck.get("prune_seconds")
        else:
            if ctx.is_main:
                _start_over(store, h, run_dir)
            # only pruning methods read batches; on CUDA a Loader holds its own copy of the
            # training set, so dense and dctps runs do not build one, and it goes after pruning
            prune_batches = None
            if cfg.sparsity.method not in ("dense", "dctps"):
                prune_batches = data_mod.Loader(
                    splits.train_x,
                    splits.train_y,
                    o.batch_size,
                    shuffle=True,
                    augment=data_mod.default_augment(info),
                    info=info,
                    generator=torch.Generator().manual_seed(cfg.seed + 7919),
                    device=dev,
                )
            try:
                prune_s = su.apply_sparsity(
                    model, cfg, prune_batches, progress=progress and ctx.is_main
                )
            except KeyboardInterrupt:
                if store is not None:
                    # a long pruning (SynFlow's, Iter-SNIP's iterations) stopped here left no
                    # row at all: say so, as an interrupted epoch does
                    with contextlib.suppress(Exception):
                        store.start(h, cfg.to_dict())
                    _say_interrupted(
                        store,
                        h,
                        f"interrupted while pruning ({cfg.sparsity.method}), before its first "
                        "epoch; run the same command again to start it over",
                    )
                raise
            except PruningFailed as e:
                if store is not None:
                    # the model is left dense: its weights place the point on a non-zeros axis
                    store.start(h, cfg.to_dict())
                    store.fail(
                        h, e.reason, weights=count(model).weights, data_root=data_root,
                        data_fingerprint=data_fp, classes=info.num_classes,
                    )  # fmt: skip
                # the keys of every other result, unknown counts None (a typing review: a
                # failed result had no `nonzeros`, a KeyError where the others had one)
                return {
                    "hash": h,
                    "status": "failed",
                    "reason": e.reason,
                    "val_acc": None,
                    "test_acc": None,
                    "best_epoch": None,
                    "history": [],
                    "epochs": 0,
                    "run_dir": str(run_dir),
                    "resumed_from": None,
                    "skipped": False,
                    "prune_seconds": None,
                    "weights": count(model).weights,
                    "nonzeros": None,
                    "alphas": None,
                    "fixed_alphas": None,
                    "trainable": None,
                    "wall_seconds": None,
                }
            del prune_batches
            model.to(dev)
        # where a rerun resumes: the last epoch with a checkpoint (an interrupt from here on
        # leaves the row `interrupted`, saying so)
        saved = int(ck["epoch"]) if ck is not None else 0
        bar = None
        try:
            counts = count(model)
            if store is not None:
                store.start(h, cfg.to_dict())
                store.update(
                    h,
                    data_root=data_root,
                    data_fingerprint=data_fp,
                    classes=info.num_classes,
                    weights=counts.weights,
                    nonzeros=counts.nonzeros,
                    alphas=counts.alphas,
                    trainable=counts.trainable,
                    prune_seconds=prune_s,
                )
                run_dir.mkdir(parents=True, exist_ok=True)
                save_config(cfg, run_dir / "config.yaml")

            su.maybe_batch_rebuild(model, cfg, dev)

            # ---- optimisation state
            optimizer = su.make_optimizer(model, o, lr_factors(cfg.model.name))
            scheduler = su.make_scheduler(optimizer, o)
            steps_per_epoch = len(train_loader)
            rigl = su.make_rigl(model, optimizer, cfg, steps_per_epoch * o.epochs)
            history: list[dict[str, Any]] = []
            best: dict[str, Any] = {"state": None, "epoch": None, "val_acc": None, "val_loss": None}
            start_epoch, elapsed = 0, 0.0
            if ck is not None:
                optimizer.load_state_dict(ck["optimizer"])
                _compat.load_scheduler_state(scheduler, ck["scheduler"])
                if (
                    rigl is not None
                    and ck.get("rigl") is not None
                    and hasattr(rigl, "load_state_dict")
                ):
                    rigl.load_state_dict(ck["rigl"])
                _set_rng_state(ck["rng"], train_loader)
                if ctx.is_main:
                    _warn_device_change(ck.get("device"), _device_label(dev), int(ck["epoch"]))
                    _warn_thread_change(ck.get("threads"), dev, int(ck["epoch"]), ck.get("device"))
                    _warn_world_change(ck.get("world_size"), ctx.world_size, int(ck["epoch"]))
                    _warn_setting_change(ck.get("config"), cfg, dev, int(ck["epoch"]))
                history = list(ck["history"])
                best = dict(ck["best"])
                start_epoch = int(ck["epoch"])
                elapsed = float(ck.get("elapsed", 0.0))
                if store is not None and ctx.is_main:
                    # The checkpoint is the truth: re-log its epochs, so a store that lost writes
                    # (killed mid-transaction, restored from backup) is whole again after a resume.
                    for rec in history:
                        store.log_epoch(
                            h, rec["epoch"], **{k: v for k, v in rec.items() if k != "epoch"}
                        )
            net = ctx.wrap(model)

            # ---- epochs
            t_session = time.perf_counter()
            bar = _bar(
                steps_per_epoch * o.epochs,
                steps_per_epoch * start_epoch,
                progress and ctx.is_main,
                cfg.summary(),
            )
            if bar is not None and start_epoch:
                # nothing else says so before the run's last line (describe)
                progress_mod.keep_line(
                    bar, f"resuming run {h} after epoch {start_epoch} of {o.epochs}"
                )
            for epoch in range(start_epoch + 1, o.epochs + 1):
                lr = float(optimizer.param_groups[0]["lr"])
                if bar is not None:
                    bar.set_description(f"epoch {epoch}/{o.epochs}")
                st = train_one_epoch(
                    net, train_loader, optimizer, epoch=epoch, rigl=rigl, ctx=ctx, bar=bar
                )
                if st.failed:
                    if store is not None:
                        store.fail(
                            h, st.failed, wall_seconds=elapsed + time.perf_counter() - t_session
                        )
                    return {
                        "hash": h,
                        "status": "failed",
                        "reason": st.failed,
                        "val_acc": None,
                        "test_acc": None,
                        "best_epoch": None,
                        "history": history,
                        "epochs": len(history),
                        "run_dir": str(run_dir),
                        "resumed_from": start_epoch or None,
                        "skipped": False,
                        "prune_seconds": prune_s,
                        "weights": counts.weights,
                        "nonzeros": counts.nonzeros,
                        "alphas": counts.alphas,
                        "fixed_alphas": counts.fixed_alphas,
                        "trainable": counts.trainable,
                        "wall_seconds": elapsed + time.perf_counter() - t_session,
                    }
                scheduler.step()
                val_loss, val_acc = evaluate(model, val_loader, ctx)
                rec = {
                    "epoch": epoch,
                    "train_loss": st.loss,
                    "train_acc": st.acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "lr": lr,
                    "seconds": st.seconds,
                }
                history.append(rec)
                better = val_acc is not None and (
                    best["val_acc"] is None or val_acc > best["val_acc"]
                )
                keep = better or val_acc is None  # without validation the last epoch is "best"
                # at most one copy per epoch, taken where it is used (the best model; rank 0's
                # checkpoint): both share it when this epoch is the best, and torch.save then
                # writes its tensors once
                state = _cpu_state(model) if keep or ctx.is_main else None
                if keep:
                    best = {
                        "state": state,
                        "epoch": epoch,
                        "val_acc": val_acc,
                        "val_loss": val_loss,
                    }
                if bar is not None:
                    va = "-" if val_acc is None else f"{100 * val_acc:.2f}%"
                    bar.set_postfix_str(
                        f"loss {st.loss:.3f} acc {100 * st.acc:.1f}% val {va} "
                        f"{st.images_per_second:.0f} img/s"
                    )
                    progress_mod.mark(bar, keep=True)
                if ctx.is_main:
                    assert store is not None
                    store.log_epoch(h, epoch, **{k: v for k, v in rec.items() if k != "epoch"})
                    ckpt_io.save_checkpoint(
                        {
                            "config_hash": h,
                            "config": cfg.to_dict(),
                            "epoch": epoch,
                            "model": state,
                            "optimizer": optimizer.state_dict(),
                            "scheduler": _compat.scheduler_state(scheduler),
                            "rng": _rng_state(train_loader),
                            "best": best,
                            "history": history,
                            "rigl": rigl.state_dict() if hasattr(rigl, "state_dict") else None,
                            "elapsed": elapsed + time.perf_counter() - t_session,
                            "prune_seconds": prune_s,
                            "threads": torch.get_num_threads(),
                            "world_size": ctx.world_size,
                            "device": _device_label(dev),
                            "data": data_fp,
                        },
                        run_dir,
                    )
                    saved = epoch
        except KeyboardInterrupt:
            _say_interrupted(
                store,
                h,
                f"interrupted after epoch {saved} of {o.epochs}; run the same command again "
                "to resume"
                if saved
                else f"interrupted before its first checkpoint (epoch 1 of {o.epochs}); run "
                "the same command again to start it over",
            )
            raise
        except Exception as e:
            # a full disk (the checkpoint's write), a device error: the row said `running`, as
            # if a process were still training it
            where = (f"after epoch {saved} of {o.epochs}" if saved
                     else f"before its first checkpoint (epoch 1 of {o.epochs})")  # fmt: skip
            cause = _stop_cause(e, ctx)
            _say_interrupted(
                store, h, f"stopped {where} by an error ({cause}); run the same command again "
                "to " + ("resume" if saved else "start it over"),
            )  # fmt: skip
            raise
        finally:
            if bar is not None:
                bar.close()

        # ---- final: best-val model on test
        try:
            if best["state"] is not None:
                model.load_state_dict(best["state"])
            _, test_acc = evaluate(model, test_loader, ctx)
            # a true number, but not one of learning (no hold-out: the test set's first batch)
            if constant_output(model, val_loader or test_loader):
                note = f"{note}; {CONSTANT_NOTE}" if note else CONSTANT_NOTE
            wall = elapsed + time.perf_counter() - t_session
            result = {
                "hash": h,
                "status": "done",
                "reason": note,
                "val_acc": best["val_acc"],
                "test_acc": test_acc,
                "best_epoch": best["epoch"],
                "weights": counts.weights,
                "nonzeros": counts.nonzeros,
                "alphas": counts.alphas,
                "fixed_alphas": counts.fixed_alphas,
                "trainable": counts.trainable,
                "prune_seconds": prune_s,
                "wall_seconds": wall,
                "history": history,
                "epochs": len(history),
                "run_dir": str(run_dir),
                "resumed_from": start_epoch or None,
                "skipped": False,
            }
            if ctx.is_main:
                assert store is not None
                ckpt_io.atomic_save(
                    {
                        "format": ckpt_io.FORMAT,
                        "version": ckpt_io.VERSION,
                        "config_hash": h,
                        "config": cfg.to_dict(),
                        "epoch": best["epoch"],
                        "model": best["state"],
                        "data": data_fp,
                    },
                    run_dir / "best.pt",
                )
                store.finish(
                    h,
                    val_acc=best["val_acc"],
                    test_acc=test_acc,
                    best_epoch=best["epoch"],
                    wall_seconds=wall,
                    reason=note,
                )
                ckpt_io.drop_backup(run_dir)
        except KeyboardInterrupt:
            # every epoch is checkpointed: a rerun only tests and records
            _say_interrupted(
                store,
                h,
                f"interrupted after its last epoch ({saved} of {o.epochs}), before testing its "
                "best model; run the same command again to finish",
            )
            raise
        except Exception as e:
            # a full disk (best.pt's write), a test-set error: as in the epochs, the row must not
            # say `running` with no process training it (a coverage review)
            cause = _stop_cause(e, ctx)
            _say_interrupted(
                store, h, f"stopped after its last epoch ({saved} of {o.epochs}) by an error "
                f"({cause}) before its result was recorded; run the same command again to finish",
            )  # fmt: skip
            raise
        ctx.barrier()
        return result


#: reason recorded on a done run whose final model gives every input the same output
CONSTANT_NOTE = (
    "the network's output is the same for every input (to 1e-6 of its scale): it computes "
    "nothing, and its accuracy is that of a constant guess"
)


#: inputs of the first batch that :func:`constant_output` runs
CONSTANT_CHECK_INPUTS = 32


def constant_output(model: nn.Module, loader: Any) -> bool:
    """Whether ``model`` (in eval mode) gives the first :data:`CONSTANT_CHECK_INPUTS` inputs of
    ``loader``'s first batch the same output, to ``1e-6`` of the outputs' scale: a pruned network
    whose every path runs through a dead ReLU (random pruning of LeNet-5 at 1%: a path exists, yet
    all logits are 0 or 1e-9). Such a run never trained, and its chance accuracy must not read as a
    result of learning. ``model`` is the unwrapped model (no DDP collectives)."""
    first = next(iter(loader), None) if loader is not None else None
    if first is None or first[0].shape[0] < 2:
        return False
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            # 32 inputs tell a constant network (every path dead: exactly one output) from one
            # that computes; a whole eval batch cost ResNet18 3.6 s of a 25 s quick run on a CPU
            out = model(first[0][:CONSTANT_CHECK_INPUTS]).float().flatten(1)
    finally:
        model.train(was)
    spread = float((out.amax(0) - out.amin(0)).max())
    return spread <= 1e-6 * max(1.0, float(out.abs().max()))


def _stop_cause(e: BaseException, ctx: DistContext) -> str:
    """Why a run stopped, as its row's reason quotes it: ``e`` in one line, or, under DDP, that
    another process stopped (gloo's "Connection closed by peer" is not this rank's error)."""
    if ctx.enabled and _peer_gone(e):
        return (
            "another process of this DDP run stopped or was killed; its own error (if it "
            "could say one) says why"
        )
    return one_line(e)


def _peer_gone(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another DDP process exited (gloo:
    "Connection closed by peer"; NCCL: a remote or closed connection)."""
    text = str(e).lower()
    return type(e).__name__ == "DistBackendError" or any(
        s in text
        for s in (
            "connection closed by peer",
            "connection reset by peer",
            "remote process exited",
        )  # fmt: skip
    )


def _say_interrupted(store: Any, h: str, reason: str) -> None:
    """Mark an interrupted run's row ``interrupted``, with why it stopped and how to go on in its
    reason (the same command resumes it, as it does a ``running`` row). Only a ``running`` row:
    a run interrupted after ``store.finish`` is done, and its row is left alone. Never raises
    (the interrupt goes on)."""
    stopping = sys.exc_info()[1]
    if isinstance(stopping, KeyboardInterrupt):  # `dctps train`'s last line says it too
        setattr(stopping, STOPPED, f"run {h} {reason}")
        if hasattr(stopping, "add_note"):  # Python 3.11: under the traceback, as a notebook
            # or a script shows it, where the attribute was seen by `dctps train` alone
            stopping.add_note(
                f"dctps: run {h} {reason} (in Python: call fit, or run_sweep, again with the "
                "same configs and out)"
            )
    if store is None:
        return
    with contextlib.suppress(Exception):
        row = store.get(h)
        if row is not None and row.get("status") == "running":
            store.update(h, status="interrupted", reason=reason)


#: the attribute a ``KeyboardInterrupt`` (or SIGTERM's :class:`~dctps.interrupts.Terminated`)
#: out of :func:`fit` carries: where the run stopped and how to go on, as its row's reason says
STOPPED = "dctps_stopped"


def _fmt_acc(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def describe(result: dict[str, Any]) -> str:
    """One line about a finished (or skipped / failed) run."""
    if result.get("status") == "failed":
        return f"run {result['hash']} failed: {result.get('reason')}"
    pre = "already done" if result.get("skipped") else "done"
    if result.get("resumed_from"):
        pre += f" (resumed after epoch {result['resumed_from']})"
    return (
        f"run {result['hash']} {pre}: val {_fmt_acc(result.get('val_acc'))} "
        f"(epoch {result.get('best_epoch')}), test {_fmt_acc(result.get('test_acc'))}, "
        f"{result.get('nonzeros')} of {result.get('weights')} weights trainable"
        + (
            f" (+ {result['alphas']} alphas{', fixed' if result.get('fixed_alphas') else ''})"
            if result.get("alphas")
            else ""
        )
        # a done run's reason says how to read val/test (Tiny ImageNet: MAX_VAL_NOTE)
        + (f"; {result['reason']}" if result.get("reason") else "")
    )
