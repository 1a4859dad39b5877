"""dctps._compat: the shims that let the package run on the oldest torch pyproject.toml allows."""

from collections import Counter

import torch
from torch.optim.lr_scheduler import MultiStepLR

from dctps import _compat
from dctps.fast import autocast_dtype


def _scheduler(milestones: list[int]) -> MultiStepLR:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return MultiStepLR(opt, milestones, 0.1)


def test_scheduler_state_survives_a_weights_only_load(tmp_path):
    sched = _scheduler([2, 4])
    sched.optimizer.step()
    sched.step()
    torch.save(_compat.scheduler_state(sched), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh = _scheduler([9])
    _compat.load_scheduler_state(fresh, state)
    assert isinstance(fresh.milestones, Counter) and fresh.milestones == Counter({2: 1, 4: 1})
    assert fresh.last_epoch == 1
    # milestones stored as a dict (a checkpoint written on torch 2.3) load as a Counter too
    _compat.load_scheduler_state(fresh, {**state, "milestones": {2: 1, 4: 1}})
    assert isinstance(fresh.milestones, Counter)
    fresh.optimizer.step()
    fresh.step()  # a non-milestone epoch: a plain dict would raise KeyError here
    fresh.step()


def test_autocast_dtype_on_and_off():
    x = torch.randn(2)
    assert autocast_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype(x) == torch.bfloat16
    assert autocast_dtype(torch.empty(2, device="meta")) is None


def test_out_of_memory_error_is_torchs():
    assert issubclass(_compat.OutOfMemoryError, Exception)
    assert _compat.OutOfMemoryError is getattr(
        torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
    )
