"""(d) Checkpoint bytes of ResNet50 at 1%/0.1%/0.01%: dctps.save vs torch.save(dense state_dict).

Usage: python benchmarks/bench_ckpt.py [--quick] [--device cuda] [--json FILE]
(or: dctps bench ckpt [--quick] [--device cuda]). See :mod:`dctps.bench`.
"""

from dctps.bench import main

if __name__ == "__main__":
    main(default="ckpt")
