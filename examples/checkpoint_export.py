"""Save a DCTpS model as a sparse checkpoint, load it back, and export it to plain PyTorch.

A CIFAR ResNet18 (11.2M weights) at 0.1% density: ``dctps.save`` stores only ``alpha``, the
non-zeros of ``S`` (values + int32 positions), biases and BatchNorm; ``D`` is a function of each
layer's shape and is regenerated on load. ``dctps.to_dense`` fuses ``W = alpha * D + S`` into
ordinary ``nn.Conv2d``/``nn.Linear`` layers, for deployment without dctps (ONNX, TorchScript).
"""

import os
import tempfile

import torch
from torch import nn

import dctps
from dctps.models import build


def main() -> None:
    torch.manual_seed(0)
    model = dctps.sparsify(build("resnet18", num_classes=10), density=0.001)
    with torch.no_grad():  # stand-in for training: give S and alpha non-trivial values
        for m in model.modules():
            if isinstance(m, (dctps.DCTpSConv2d, dctps.DCTpSLinear)):
                m.values.normal_(0, 0.1)
                m.alpha.fill_(0.9)
    model.eval()
    x = torch.randn(4, 3, 32, 32)

    with tempfile.TemporaryDirectory() as tmp:
        sparse_path = os.path.join(tmp, "resnet18-0.1pct.dctps")
        dctps.save(model, sparse_path, arch={"name": "resnet18", "num_classes": 10})
        dense = dctps.to_dense(model)  # plain nn.Conv2d / nn.Linear with the fused weights
        dense_path = os.path.join(tmp, "resnet18-dense.pt")
        torch.save(dense.state_dict(), dense_path)
        sparse_mb = os.path.getsize(sparse_path) / 1e6
        dense_mb = os.path.getsize(dense_path) / 1e6
        print(f"sparse checkpoint: {sparse_mb:.2f} MB; dense state_dict: {dense_mb:.1f} MB "
              f"({dense_mb / sparse_mb:.0f}x larger)")  # fmt: skip
        print(dctps.inspect(sparse_path).table().splitlines()[-1])

        loaded = dctps.load(sparse_path).eval()  # rebuilt from the stored architecture spec

    assert not any(isinstance(m, dctps.DCTpSConv2d) for m in dense.modules())
    assert any(isinstance(m, nn.Conv2d) for m in dense.modules())
    with torch.no_grad():
        y, y_loaded, y_dense = model(x), loaded(x), dense(x)
    print(f"max |output difference|: loaded {float((y - y_loaded).abs().max()):.1e}, "
          f"dense export {float((y - y_dense).abs().max()):.1e}")  # fmt: skip
    assert torch.equal(y, y_loaded), "a loaded checkpoint must reproduce the model exactly"
    assert torch.allclose(y, y_dense, rtol=1e-4, atol=1e-5), "the dense export must match"
    assert dense_mb > 20 * sparse_mb, "the sparse checkpoint should be far smaller"


if __name__ == "__main__":
    main()
