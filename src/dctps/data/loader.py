"""A fast, reproducible in-memory batch loader with on-device augmentation and DDP sharding."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from dctps.data.augment import crop_with_offsets, hflip_with_mask, normalize
from dctps.errors import DctpsError, check_flag, check_generator, no_cuda, show, user_device


class Loader:
    """Iterate over ``(x_float, y)`` batches of an in-memory uint8 data set.

    The whole data set is moved to ``device`` once (uint8 keeps this small: CIFAR is 150 MB), and
    each batch is gathered, augmented and normalised there, so there are no worker processes and
    no per-image Python work.

    Randomness: at the start of every epoch the loader draws, from ``generator`` and in this order,
    the permutation (if ``shuffle``), then crop offsets and flip decisions for every position of
    the epoch (if ``augment``). The draws are the same size on every rank, so all ranks see the same
    permutation if seeded alike, and a sample's augmentation depends only on its position in the
    epoch: the union over ranks of a sharded run equals the unsharded run with the same seed.

    Sharding (DDP): rank ``r`` takes positions ``r, r + world_size, ...`` of the epoch order, so the
    shards are disjoint and cover the data set. Without ``drop_last`` the shards can differ by one
    sample (and so possibly by one batch); for training under DDP use ``drop_last=True``, which
    first drops the last ``n % world_size`` positions of the permutation so every rank has the same
    count.

    Args:
        x: uint8 ``(N, C, H, W)`` images.
        y: int64 ``(N,)`` labels.
        batch_size: samples per batch (per rank).
        shuffle: draw a fresh permutation every epoch (else natural order).
        augment: apply the crop/flip policy of ``info`` (``crop_padding``, ``hflip``).
        info: a ``DatasetInfo``; its ``mean``/``std`` normalise every batch.
        generator: CPU ``torch.Generator`` for all randomness; ``None`` seeds a fresh one from
            torch's global generator (reproducible under ``torch.manual_seed``).
        drop_last: drop the last incomplete batch.
        device: where batches are produced and augmented.
        rank, world_size: shard of this process.

    Yields:
        ``(x, y)``: float32 ``(B, C, H, W)`` normalised images and int64 ``(B,)`` labels, on
        ``device``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        info: Any,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        for arg, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):  # a numpy array: torch.from_numpy(a)
                raise DctpsError(
                    f"Loader: {arg} must be a torch.Tensor, got {show(t)} (torch.from_numpy "
                    "converts a numpy array without a copy)"
                )
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DctpsError(
                f"Loader: x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        channels = len(getattr(info, "mean", ()) or ())
        if channels and x.shape[1] != channels and x.shape[3] == channels:
            raise DctpsError(  # else "normalize: 32 channels but 3 means" at the first batch
                f"Loader: x has shape {tuple(x.shape)}, images with channels last (N, H, W, C); "
                f"it takes (N, C, H, W): x.permute(0, 3, 1, 2)"
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DctpsError(
                f"Loader: y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}"
            )
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            # a cast would cut 1.9 to class 1 (the CIFAR reader refuses such labels too)
            raise DctpsError(f"Loader: y must hold integer class labels, got {y.dtype}")
        classes = getattr(info, "num_classes", None)
        if y.numel() and isinstance(classes, int):
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                raise DctpsError(
                    f"Loader: labels must be in [0, {classes}) for {getattr(info, 'name', 'data')}"
                    f" ({classes} classes), got {low if low < 0 else high}"
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DctpsError(
                f"Loader: batch_size must be a positive integer, got {show(batch_size)}"
            )
        lacks = [a for a in ("mean", "std", "crop_padding", "hflip") if not hasattr(info, a)]
        if lacks:  # else an AttributeError from the first batch's normalisation
            raise DctpsError(
                f"Loader: info must be a DatasetInfo (dctps.data.get_info(name), or a Split's "
                f".info), got {type(info).__name__}, which has no {', '.join(lacks)}"
            )
        if not (isinstance(world_size, int) and world_size >= 1):
            raise DctpsError(
                f"Loader: world_size must be a positive integer, got {show(world_size)}"
            )
        if not (isinstance(rank, int) and 0 <= rank < world_size):
            raise DctpsError(f"Loader: rank must be in [0, {world_size}), got {show(rank)}")
        check_generator(generator, "Loader: generator")
        for arg, flag in (("shuffle", shuffle), ("augment", augment), ("drop_last", drop_last)):
            check_flag(flag, f"Loader: {arg}")
        self.device = user_device(device, "Loader: device")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DctpsError(no_cuda(f"Loader: device {device!r}", "give device='cpu'"))
        self.x = x.to(self.device)
        self.y = y.to(device=self.device, dtype=torch.int64)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.info = info
        self.drop_last = bool(drop_last)
        self.rank = rank
        self.world_size = world_size
        self.crop_padding = int(info.crop_padding) if augment else 0
        self.hflip = bool(info.hflip) if augment else False
        self.augment = self.crop_padding > 0 or self.hflip
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.generator = generator
        self.epoch = 0  # number of epochs started
        self._epoch_start_state: torch.Tensor | None = None  # generator state when it started
        self._in_epoch = False

    # ------------------------------------------------------------------ sizes
    def _positions(self) -> range:
        """Positions in the epoch order that this rank takes."""
        n = self.x.shape[0]
        if self.drop_last:
            n -= n % self.world_size  # equal shard sizes, so every rank runs the same batch count
        return range(self.rank, n, self.world_size)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch (after ``drop_last``)."""
        m = len(self._positions())
        return (m // self.batch_size) * self.batch_size if self.drop_last else m

    def __len__(self) -> int:
        """Number of batches per epoch on this rank."""
        m = len(self._positions())
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Generator state and epoch counter, for resuming.

        Between epochs this is the state the next epoch will start from. Mid-epoch it is the state
        at the start of the current epoch (with that epoch not counted), so a resumed loader
        replays the interrupted epoch from its first batch.
        """
        if self._in_epoch and self._epoch_start_state is not None:
            return {"generator": self._epoch_start_state.clone(), "epoch": self.epoch - 1}
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next epoch reproduces the saved run's next epoch."""
        try:
            self.generator.set_state(state["generator"])
            self.epoch = int(state["epoch"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise DctpsError(f"Loader.load_state_dict: not a Loader state ({e})") from None
        self._in_epoch = False
        self._epoch_start_state = None

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        g = self.generator
        self._epoch_start_state = g.get_state()
        self._in_epoch = True
        self.epoch += 1
        # All draws happen here, before the first batch, and have the same size on every rank.
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.crop_padding > 0:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
        if self.hflip:
            flips = torch.rand(n, generator=g) < 0.5
        r = self._positions()
        pos = torch.arange(r.start, r.stop, r.step)[: self.num_samples]
        idx = order[pos].to(self.device)
        if offsets is not None:
            offsets = offsets[pos].to(self.device)
        if flips is not None:
            flips = flips[pos].to(self.device)
        _, _, h, w = self.x.shape
        return self._batches(idx, offsets, flips, (h, w))

    def _batches(
        self,
        idx: torch.Tensor,
        offsets: torch.Tensor | None,
        flips: torch.Tensor | None,
        size: tuple[int, int],
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        for start in range(0, idx.shape[0], bs):
            sl = slice(start, start + bs)
            xb = self.x[idx[sl]]
            if offsets is not None:
                xb = crop_with_offsets(xb, size, self.crop_padding, offsets[sl])
            if flips is not None:
                xb = hflip_with_mask(xb, flips[sl])
            yield normalize(xb, self.info.mean, self.info.std), self.y[idx[sl]]
        self._in_epoch = False
