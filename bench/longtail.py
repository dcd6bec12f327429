"""Long-tail lever: balanced_softmax against plain cross-entropy, same budget, averaged over seeds,
on the demo data (or --data). Prints test balanced accuracy per seed, the means and their ratio.

    PYTHONPATH=. python bench/longtail.py [--epochs 15] [--seeds 0 1 2] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import record  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402
from trainers.data import load_dataset  # noqa: E402
from trainers.loop import fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=None)
    parser.add_argument("--model", default="resnet50")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"ce": [], "balanced_softmax": []}
    for seed in args.seeds:
        data = load_dataset(args.data, seed=seed)
        for loss in results:
            config = TrainConfig.from_flat({"model": args.model, "epochs": args.epochs, "loss": loss, "seed": seed,
                                            "data": args.data})
            results[loss].append(fit(config, data).test["balanced_accuracy"])
            print(f"seed {seed} {loss}: test balanced accuracy {results[loss][-1]:.4f}", flush=True)
    ce, bs = float(np.mean(results["ce"])), float(np.mean(results["balanced_softmax"]))
    record("longtail", model=args.model, epochs=args.epochs, seeds=args.seeds,
           ce=[round(v, 4) for v in results["ce"]], balanced_softmax=[round(v, 4) for v in results["balanced_softmax"]],
           ce_mean=round(ce, 4), balanced_softmax_mean=round(bs, 4), ratio=round(bs / ce, 3), goal="> 1")


if __name__ == "__main__":
    main()
