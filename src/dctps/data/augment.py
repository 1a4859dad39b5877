"""Batched, vectorised augmentation on image tensors (no per-image Python loops).

Crop and flip work on any dtype and are meant to run on uint8 batches before :func:`normalize`,
so the zero padding is a black pixel, as in torchvision's ``RandomCrop(padding=4)`` placed before
``ToTensor``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dctps.errors import DctpsError, as_int, check_generator, show

__all__ = [
    "crop_with_offsets", "default_augment", "hflip_with_mask", "normalize", "random_crop",
    "random_hflip",
]  # fmt: skip


def _check_images(x: object, who: str, batch: bool = True) -> None:
    """A :class:`DctpsError` unless ``x`` is a batch tensor ``(N, C, H, W)`` (``batch``), or
    any tensor ``(..., C, H, W)``: one image ``(C, H, W)`` given for a batch was read as ``C``
    images of ``H`` rows (a flip came back with an added dimension), or failed deep in torch."""
    if not isinstance(x, torch.Tensor) or (x.dim() != 4 if batch else x.dim() < 3):
        shapes = "an (N, C, H, W)" if batch else "a (..., C, H, W)"
        hint = " (one image: x[None])" if isinstance(x, torch.Tensor) and x.dim() == 3 else ""
        raise DctpsError(f"{who}: x must be {shapes} tensor, got {show(x)}{hint}")


def _check_window(size: object, padding: object, who: str) -> tuple[int, int, int]:
    """``size`` as ``(sh, sw)`` of positive ints, and ``padding`` as a non-negative int (numpy
    integers too), or a :class:`DctpsError` naming the bad one."""
    one = as_int(size)
    pair: list[int | None]
    if one is not None:
        pair = [one, one]
    else:
        try:
            pair = [as_int(v) for v in size]  # type: ignore[attr-defined]
        except TypeError:
            pair = []
    if len(pair) != 2 or not all(v is not None and v > 0 for v in pair):
        raise DctpsError(
            f"{who}: size must be a positive integer or a pair (height, width) of them, got "
            f"{show(size)}"
        )
    pad = as_int(padding)
    if pad is None or pad < 0:
        raise DctpsError(f"{who}: padding must be a non-negative integer, got {show(padding)}")
    return pair[0], pair[1], pad  # type: ignore[return-value]


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    # Random numbers must be drawn on the generator's own device; move them to the data afterwards.
    return generator.device if generator is not None else fallback


def crop_with_offsets(
    x: torch.Tensor, size: int | tuple[int, int], padding: int, offsets: torch.Tensor
) -> torch.Tensor:
    """Zero-pad ``x`` by ``padding`` on every side and cut one window per image at given offsets.

    Args:
        x: ``(N, C, H, W)`` batch, any dtype.
        size: output size ``s`` or ``(sh, sw)``.
        padding: zero padding added on each side (>= 0).
        offsets: integer ``(N, 2)`` tensor of ``(top, left)`` offsets into the padded image, each in
            ``[0, H + 2*padding - sh]`` resp. ``[0, W + 2*padding - sw]``.

    Returns:
        ``(N, C, sh, sw)`` tensor with ``out[n] = padded[n, :, top:top+sh, left:left+sw]``.
    """
    _check_images(x, "crop_with_offsets")
    sh, sw, padding = _check_window(size, padding, "crop_with_offsets")
    n, c, h, w = x.shape
    if (
        not isinstance(offsets, torch.Tensor)
        or offsets.shape != (n, 2)
        or offsets.is_floating_point()
    ):
        raise DctpsError(
            f"crop_with_offsets: offsets must be an integer ({n}, 2) tensor of (top, left), "
            f"got {show(offsets)}"
        )
    hp, wp = h + 2 * padding, w + 2 * padding
    if sh > hp or sw > wp:
        raise DctpsError(f"crop size {(sh, sw)} exceeds padded image size {(hp, wp)}")
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    offsets = offsets.to(device=x.device, dtype=torch.int64)
    # every window as a view (N, C, hp-sh+1, wp-sw+1, sh, sw), then one per image: the
    # advanced indices around the channel slice put N first, giving (N, C, sh, sw). A third
    # faster than gathering rows then columns (a profiling review), and the same pixels.
    windows = padded.unfold(2, sh, 1).unfold(3, sw, 1)
    return windows[torch.arange(n, device=x.device), :, offsets[:, 0], offsets[:, 1]]


def random_crop(
    x: torch.Tensor,
    size: int | tuple[int, int],
    padding: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop per image: zero-pad by ``padding``, cut a ``size`` window at a random offset.

    With ``size`` equal to the image size the offsets are uniform in ``[0, 2*padding]`` per axis, so
    the output is the input shifted by up to ``padding`` pixels, filled with zeros.

    Args:
        x: ``(N, C, H, W)`` batch, any dtype, any device.
        size: output size ``s`` or ``(sh, sw)``.
        padding: zero padding on each side.
        generator: source of the offsets (``None``: torch's global generator).

    Returns:
        ``(N, C, sh, sw)`` tensor of ``x``'s dtype on ``x``'s device.
    """
    _check_images(x, "random_crop")
    sh, sw, padding = _check_window(size, padding, "random_crop")
    check_generator(generator, "random_crop: generator", cpu=False)
    n, _, h, w = x.shape
    if sh > h + 2 * padding or sw > w + 2 * padding:  # before the offsets' draw
        raise DctpsError(
            f"random_crop: crop size {(sh, sw)} with padding {padding} does not fit images of "
            f"size {(h, w)}: the size must be at most the padded image's"
        )
    dev = _gen_device(generator, x.device)
    top = torch.randint(0, h + 2 * padding - sh + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, w + 2 * padding - sw + 1, (n,), generator=generator, device=dev)
    return crop_with_offsets(x, (sh, sw), padding, torch.stack([top, left], dim=1))


def hflip_with_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip left-right each image of ``x`` ``(N, C, H, W)`` whose bool ``mask`` ``(N,)`` is set."""
    _check_images(x, "hflip_with_mask")
    if not isinstance(mask, torch.Tensor) or mask.shape != (x.shape[0],):
        raise DctpsError(
            f"hflip_with_mask: mask must be a ({x.shape[0]},) tensor, one flag per image, got "
            f"{show(mask)}"
        )
    mask = mask.to(device=x.device, dtype=torch.bool)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``x`` (``(N, C, H, W)``) left-right with probability 0.5."""
    _check_images(x, "random_hflip")
    check_generator(generator, "random_hflip: generator", cpu=False)
    dev = _gen_device(generator, x.device)
    mask = torch.rand(x.shape[0], generator=generator, device=dev) < 0.5
    return hflip_with_mask(x, mask)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Map uint8 pixels to ``(x / 255 - mean) / std`` per channel, as float32.

    Args:
        x: uint8 ``(N, C, H, W)`` or ``(C, H, W)``.
        mean, std: ``C`` values each, in [0, 1] pixel units.

    Returns:
        float32 tensor of ``x``'s shape on ``x``'s device.
    """
    _check_images(x, "normalize", batch=False)
    if x.dtype != torch.uint8:  # float pixels in [0, 1] would be divided by 255 once more
        raise DctpsError(
            f"normalize: expected uint8 pixels in 0..255, got {x.dtype}; pass the images as "
            "uint8 (e.g. (x * 255).round().to(torch.uint8) for floats in [0, 1])"
        )
    c = x.shape[-3]
    m, s = _channel_constants(_per_channel(mean, "mean", c), _per_channel(std, "std", c), x.device)
    return (x.to(torch.float32) / 255.0 - m) / s


def _per_channel(values: object, name: str, channels: int) -> tuple[float, ...]:
    """``values`` as ``channels`` floats, or a :class:`DctpsError` naming ``name``."""
    try:
        out = tuple(float(v) for v in values) if not isinstance(values, str) else None  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        out = None
    if out is None or len(out) != channels:
        raise DctpsError(
            f"normalize: {name} must be {channels} numbers, one per channel of x, got "
            f"{show(values)}"
        )
    return out


@functools.lru_cache(maxsize=16)
def _channel_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as ``(C, 1, 1)`` float32 tensors on ``device``, made once: building
    them per batch copied host memory to the GPU each time, a copy that waits for the queued
    training step (two host-device synchronisations per batch)."""
    with torch.inference_mode(False):  # also serves batches drawn outside inference mode
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    return m, s


def default_augment(info: Any) -> bool:
    """Whether ``info`` (a ``DatasetInfo``) asks for any training augmentation (crop or flip)."""
    if not (hasattr(info, "crop_padding") and hasattr(info, "hflip")):
        raise DctpsError(
            f"default_augment: info must be a DatasetInfo (dctps.data.get_info(name)), got "
            f"{show(info)}"
        )
    return bool(info.crop_padding > 0 or info.hflip)
