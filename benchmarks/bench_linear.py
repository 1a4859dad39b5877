"""(a) Linear 1024/4096/8192 at 0.1%, batch 128: fast DCTpS vs nn.Linear (forward+backward).

Usage: python benchmarks/bench_linear.py [--quick] [--device cuda] [--json FILE]
(or: dctps bench linear [--quick] [--device cuda]). See :mod:`dctps.bench`.
"""

from dctps.bench import main

if __name__ == "__main__":
    main(default="linear")
