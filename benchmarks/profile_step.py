"""Issue 11 (c): where a ResNet18 training step spends its GPU time, dense against DCTpS.

For each kind of step (``dense``, ``auto``, ``batched``; see ``step_cudagraph.py``) this profiles
``--steps`` eager steps with :mod:`torch.profiler` and prints, per step, the wall time, the summed
GPU kernel time (their difference is time the GPU waits on the host), and the kernels that take the
most GPU time. A step whose kernel time is below its wall time is bound by the host; one whose
kernel time is the larger part is bound by the GPU, and its kernel table says which work to fuse.

    python benchmarks/profile_step.py [--batch 128] [--steps 10] [--top 12]

On a machine without CUDA it profiles CPU operators instead (a dry run of the script).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from dctps.bench import positive_int
from dctps.models import names as model_names

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cudagraph import STEP_KINDS, make_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--batch", type=positive_int, default=128, help="images per step; default %(default)s"
    )
    ap.add_argument(
        "--steps",
        type=positive_int,
        default=10,
        help="eager steps profiled per kind (after 3 unprofiled warm-up steps); "
        "default %(default)s",
    )
    ap.add_argument(
        "--top",
        type=positive_int,
        default=12,
        help="rows of each kind's operator table (the most GPU time first; CPU time without "
        "CUDA); default %(default)s",
    )
    ap.add_argument(
        "--model", default="resnet18", choices=model_names(),
        help="a dctps.models name; default %(default)s",
    )  # fmt: skip
    ap.add_argument(
        "--kinds",
        nargs="+",
        default=["dense", "auto", "batched"],
        choices=STEP_KINDS,
        help="the steps to profile, in this order (see step_cudagraph.py); default: "
        "dense auto batched",
    )
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    for kind in a.kinds:
        step = make_step(kind, device, a.batch, a.model)
        for _ in range(3):  # auto's micro-benchmarks and the caches, outside the profile
            step()
        sync()
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            sync()
            wall = (time.perf_counter() - t0) / a.steps
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        gpu = sum(e.self_device_time_total for e in kernels) / a.steps / 1e3 if cuda else math.nan
        n_ops = sum(e.count for e in events if e.key.startswith("aten::")) / a.steps
        print(
            f"\n== {kind}: wall {1e3 * wall:.2f} ms/step (profiled), "
            f"GPU kernels {gpu:.2f} ms/step, {n_ops:.0f} aten calls/step"
        )
        print(events.table(sort_by=sort, row_limit=a.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
