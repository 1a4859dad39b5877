"""(b) Every distinct conv of ResNet18 and VGG19 at CIFAR sizes.

DCTpS (auto and each path) vs nn.Conv2d and the reference two-conv scheme.

Usage: python benchmarks/bench_conv.py [--quick] [--device cuda] [--json FILE]
(or: dctps bench conv [--quick] [--device cuda]). See :mod:`dctps.bench`.
"""

from dctps.bench import main

if __name__ == "__main__":
    main(default="conv")
