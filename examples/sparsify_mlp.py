"""Sparsify your own model with one call and train it in a plain PyTorch loop.

A small CNN on the embedded 8x8 digits (scikit-learn ships them: no download) becomes a DCTpS
network at 1% density: every ``nn.Conv2d``/``nn.Linear`` computes with ``W = alpha * D + S``, where
only the 1% non-zeros of ``S`` and one ``alpha`` per layer are trained. The training loop is
ordinary PyTorch. Runs in a few seconds on a CPU; the README shows this code verbatim.
"""

# --- readme start ---
import torch
import torch.nn.functional as F
from torch import nn

import dctps
from dctps.data import Loader, build

torch.manual_seed(0)
data = build("digits")  # uint8 (N, 1, 8, 8) images; train / seeded 10% validation / test
train = Loader(data.train_x, data.train_y, 64, shuffle=True, augment=False, info=data.info)
test = Loader(data.test_x, data.test_y, 512, shuffle=False, augment=False, info=data.info)

model = nn.Sequential(  # any model: its Linear/Conv2d layers are replaced in place
    nn.Conv2d(1, 32, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(32, 32, 3, padding=1),
    nn.ReLU(),
    nn.AvgPool2d(2),
    nn.Flatten(),
    nn.Linear(32 * 4 * 4, 256),
    nn.ReLU(),
    nn.Linear(256, 10),
)
dctps.sparsify(model, density=0.01)  # W = alpha * D + S; 1% of the weights are trainable
print(dctps.count(model))

opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(10):
    for x, y in train:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

model.eval()
with torch.no_grad():
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
accuracy = correct / len(data.test_y)
print(f"test accuracy at 1% density: {accuracy:.1%} (chance: 10%)")
# --- readme end ---

assert accuracy > 0.80, f"expected well above chance (10%), got {accuracy:.1%}"
