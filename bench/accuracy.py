"""Recipes compared on real photos: cvstudy's defaults against a plain textbook recipe, same epochs,
several seeds, on a dataset directory in the project's npy layout (e.g. a long-tailed CIFAR-10 set).

Prints one JSON line per (recipe, seed) run and one per recipe (mean and std of test balanced accuracy
and macro F1), then the ratio defaults / textbook. Each recipe is a set of TrainConfig overrides, so the
textbook is a reference configuration of the one trainer, not a second trainer.

    PYTHONPATH=. python bench/accuracy.py --data DIR [--epochs 15] [--seeds 0 1 2]
        [--recipes defaults textbook] [--extra NAME='{"lr": 1e-3}'] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import record  # noqa: E402
from cvstudy.trainers.config import TrainConfig  # noqa: E402
from cvstudy.trainers.data import load_dataset  # noqa: E402
from cvstudy.trainers.loop import fit  # noqa: E402

# Everything that decides the result is pinned, so that a change of cvstudy's defaults does not move
# the reference: AdamW with a one-cycle schedule (linear warmup over 30 % of the steps, cosine to 0),
# pad-4 crop + horizontal flip, label smoothing 0.1, plain cross-entropy on uniformly drawn batches,
# one view of each image at evaluation (no test-time flips).
TEXTBOOK = {
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.05,
    "momentum": 0.9,
    "batch_size": 32,
    "warmup_fraction": 0.3,
    "aug": "basic",
    "mixup": 0.0,
    "cutmix": 0.0,
    "label_smoothing": 0.1,
    "loss": "ce",
    "class_sampler": "uniform",
    "drw_epoch": None,
    "drop_rate": 0.0,
    "tta": "none",
}
RECIPES = {
    "defaults": {},  # TrainConfig as shipped
    "textbook": TEXTBOOK,
}
# The best recipe found on cifar10lt-small *is* cvstudy's defaults (bench/RESULTS.md "Defaults chosen on photos"),
# so it is not listed twice; --extra NAME=JSON compares any other recipe on the same seeds.


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="dataset directory (npy layout)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    parser.add_argument("--extra", nargs="*", default=[], help="NAME=JSON overrides: more recipes to compare")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    recipes = {name: RECIPES[name] for name in args.recipes}
    for item in args.extra:
        name, _, overrides = item.partition("=")
        recipes[name] = json.loads(overrides)
    results: dict[str, list[dict]] = {name: [] for name in recipes}
    t_start = time.time()
    for seed in args.seeds:
        data = load_dataset(args.data, seed=seed)
        for name, overrides in recipes.items():
            config = TrainConfig.from_flat(
                {**overrides, "model": args.model, "epochs": args.epochs, "seed": seed, "data": args.data}
            )
            t0 = time.time()
            result = fit(config, data)
            row = {
                "balanced_accuracy": result.test["balanced_accuracy"],
                "macro_f1": result.test["macro_f1"],
                "val_balanced_accuracy": result.val["balanced_accuracy"],
                "seconds": round(time.time() - t0, 1),
                # the validation curve, for how early a bad run can be told from a good one (bench/rankcorr.py)
                "val_curve": [round(h["val_balanced_accuracy"], 4) for h in result.history],
            }
            results[name].append(row)
            print(json.dumps({"recipe": name, "seed": seed, **row}), flush=True)
    summary = {}
    for name, rows in results.items():
        bal = np.array([r["balanced_accuracy"] for r in rows])
        f1 = np.array([r["macro_f1"] for r in rows])
        summary[name] = float(bal.mean())
        record(
            "accuracy",
            data=args.data,
            model=args.model,
            epochs=args.epochs,
            seeds=args.seeds,
            recipe=name,
            overrides=recipes[name],
            test_balanced_accuracy=[round(v, 4) for v in bal],
            balanced_accuracy_mean=round(float(bal.mean()), 4),
            balanced_accuracy_std=round(float(bal.std(ddof=1)), 4) if len(bal) > 1 else 0.0,
            macro_f1_mean=round(float(f1.mean()), 4),
            macro_f1_std=round(float(f1.std(ddof=1)), 4) if len(f1) > 1 else 0.0,
        )
    if "defaults" in summary and "textbook" in summary:
        record(
            "accuracy_ratio",
            data=args.data,
            epochs=args.epochs,
            seeds=args.seeds,
            defaults_over_textbook=round(summary["defaults"] / summary["textbook"], 3),
            goal=">= 1.10",
            wall_seconds=round(time.time() - t_start),
        )


if __name__ == "__main__":
    main()
