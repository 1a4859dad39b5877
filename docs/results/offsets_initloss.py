"""Initial loss on 512 real CIFAR-10 training images for each offset / scaling (``S`` is nearly
empty at these densities, so every layer is about ``alpha * D``); see docs/results/offsets.md.

    OMP_NUM_THREADS=1 python docs/results/offsets_initloss.py [DATA_ROOT]              # LeNet-5, 1%
    OMP_NUM_THREADS=1 python docs/results/offsets_initloss.py DATA_ROOT resnet18 0.001  # BN net

The model is in training mode (BatchNorm normalises with the batch's statistics, as in the first
training step).
"""

import sys

import torch
import torch.nn.functional as F

import dctps
from dctps import data, models

VARIANTS = [
    ("dense (Kaiming)", None),
    ("dct (paper)", {}),
    ("dct_signflip", {"offset": "dct_signflip"}),
    ("dct_permuted", {"offset": "dct_permuted"}),
    ("hadamard", {"offset": "hadamard"}),
    ("gaussian", {"offset": "gaussian"}),
    ("α per channel", {"alpha": "channel", "charge_alpha": False}),
    ("α init Kaiming", {"alpha_init": "kaiming"}),
    ("dct, last layer left dense", {"exclude": "LAST"}),
]
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)


def main() -> None:
    torch.set_num_threads(1)
    root = sys.argv[1] if len(sys.argv) > 1 else None  # None: $DCTPS_DATA
    model = sys.argv[2] if len(sys.argv) > 2 else "lenet5"
    density = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
    print(f"{model}, density {density:g}")
    sp = data.build("cifar10", root, subset=512)
    x = (sp.train_x.float() / 255 - MEAN) / STD
    y = sp.train_y
    print("| variant | initial loss (seeds 0, 1, 2) | share of the batch on the modal class |")
    print("|---|---|---|")
    for name, kw in VARIANTS:
        losses, modal = [], []
        for seed in range(3):
            torch.manual_seed(seed)
            m = models.build(model, num_classes=10)
            if kw is not None and kw.get("exclude") == "LAST":  # the classifier's nn.Linear
                last = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)][-1]
                kw = {"exclude": [last]}
            if kw is not None:
                dctps.sparsify(m, density, seed=seed, **kw)
            m.train()
            with torch.no_grad():
                out = m(x)
            pred = out.argmax(1)
            losses.append(F.cross_entropy(out, y).item())
            modal.append((pred == pred.mode().values).float().mean().item())
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in losses)} | "
              f"{', '.join(f'{v:.2f}' for v in modal)} |")  # fmt: skip


if __name__ == "__main__":
    main()
