"""(c) A whole ResNet18 training step: DCTpS at 0.1% (mode='auto') vs dense.

Usage: python benchmarks/bench_step.py [--quick] [--device cuda] [--json FILE]
(or: dctps bench step [--quick] [--device cuda]). See :mod:`dctps.bench`.
"""

from dctps.bench import main

if __name__ == "__main__":
    main(default="step")
