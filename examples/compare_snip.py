"""DCTpS against SNIP (pruning at initialisation) on the same model at the same density.

The same 4-layer MLP on the embedded digits is made 0.5% dense twice: once with
``dctps.sparsify`` (a random sparse ``S`` plus the fixed DCT offset ``alpha * D``), once with
``dctps.pruning.prune(model, d, "snip", batches)`` (keep the weights with the largest
``|W * dL/dW|`` on one batch, Lee et al. 2019). Both train with the same loop; at this density the
pruned network has too few paths left, while DCTpS keeps a dense, well-conditioned operator.
"""

import torch
import torch.nn.functional as F
from torch import nn

import dctps
from dctps.data import Loader, build
from dctps.pruning import prune

DENSITY = 0.005


def mlp() -> nn.Module:
    """64 -> 256 -> 256 -> 256 -> 10 on flattened 8x8 digits (150k weights)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


def train_and_test(model: nn.Module, data, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    train = Loader(data.train_x, data.train_y, 64, shuffle=True, augment=False, info=data.info,
                   generator=gen)  # fmt: skip
    test = Loader(data.test_x, data.test_y, 512, shuffle=False, augment=False, info=data.info)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(15):
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
    return correct / len(data.test_y)


def main(seed: int = 0) -> tuple[float, float]:
    data = build("digits", split_seed=seed)

    torch.manual_seed(seed)
    dct_net = dctps.sparsify(mlp(), DENSITY, seed=seed)

    torch.manual_seed(seed)
    snip_net = mlp()
    batch = Loader(data.train_x, data.train_y, 128, shuffle=True, augment=False, info=data.info,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    prune(snip_net, DENSITY, "snip", batches=batch)

    for name, net in (("DCTpS", dct_net), ("SNIP", snip_net)):
        print(f"{name:<6} trainable weights: {dctps.count(net).nonzeros:,}")
    acc_dct = train_and_test(dct_net, data, seed)
    acc_snip = train_and_test(snip_net, data, seed)
    print(f"test accuracy at {DENSITY:.1%} density: DCTpS {acc_dct:.1%}, SNIP {acc_snip:.1%} "
          f"({100 * (acc_dct - acc_snip):+.1f} points for DCTpS)")  # fmt: skip
    return acc_dct, acc_snip


if __name__ == "__main__":
    dct_acc, snip_acc = main()
    assert dct_acc > snip_acc + 0.05, "expected DCTpS to beat SNIP by more than 5 points"
