"""(e) Peak memory of a training step of the 8192 Linear: fast DCTpS vs dense, fresh subprocesses.

Usage: python benchmarks/bench_memory.py [--quick] [--device cuda] [--json FILE]
(or: dctps bench memory [--quick] [--device cuda]). See :mod:`dctps.bench`.
"""

from dctps.bench import main

if __name__ == "__main__":
    main(default="memory")
