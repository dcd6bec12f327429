"""Mutation testing of the modules that compute what users read: mutmut changes one thing at a time in
them (an operator, a constant, a condition, a returned value) and runs the fast tests that reach the
changed function; a change no test notices is a survivor.

    python bench/mutation.py                      # every module of [tool.mutmut] only_mutate
    python bench/mutation.py cvstudy.orchestrator.stats   # one module (or any prefix of mutant names:
                                                          # cvstudy.orchestrator.sweep.warmstart.x_parse)
    python bench/mutation.py --scores-only cvstudy.trainers.augment   # the scores of the last runs, none run

Prints, per module, the mutants killed, the survivors, those no test reached, those not yet run, and the
score: killed over all but the equivalent ones (bench/mutation_equivalent.txt names each with why no test
can tell it apart; a mutant not yet run counts against it). One JSON line per module goes to
bench/results.jsonl. Survivors: `../../.venv/bin/mutmut show NAME` from build/mutation/.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import tomllib
from common import record  # bench/common.py: one JSON line per figure

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "mutation"
PACKAGES = ("orchestrator", "trainers", "studies")  # installed as cvstudy.<folder> (pyproject.toml)
LINKED = ("tests", "pyproject.toml", "README.md", "Makefile", "docs", "bench", "data", "mlruns", *PACKAGES)
MUTMUT = str(Path(sys.executable).parent / "mutmut")
EQUIVALENT = Path(__file__).with_name("mutation_equivalent.txt")


def stage() -> None:
    """mutmut names a mutant after its file's path, and the tests import ``cvstudy.<package>``: the
    packages are copied into ``STAGE/cvstudy/`` as they install (times kept, so that mutmut redoes only
    what changed); everything else is linked."""
    package = STAGE / "cvstudy"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    shutil.copy2(ROOT / "cvstudy" / "__init__.py", package)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in LINKED:
        if not (STAGE / name).is_symlink():
            (STAGE / name).symlink_to(ROOT / name)


def modules() -> list[str]:
    """The dotted names of the files ``[tool.mutmut] only_mutate`` lists (a folder's ``*``: its modules)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    names = []
    for pattern in config["only_mutate"]:
        for path in sorted(STAGE.glob(pattern)):
            if path.suffix == ".py" and path.name != "__init__.py":
                names.append(".".join(path.relative_to(STAGE).with_suffix("").parts))
    return names


def equivalent() -> dict[str, str]:
    """``{mutant name: why it cannot be told apart}`` from bench/mutation_equivalent.txt."""
    if not EQUIVALENT.exists():
        return {}
    out = {}
    for line in EQUIVALENT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            out[name] = why.strip()
    return out


def results() -> dict[str, str]:
    """Every mutant's status as mutmut reports it."""
    proc = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=STAGE, capture_output=True, text=True, check=True)
    return dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", proc.stdout, flags=re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="dotted module names or name prefixes (default: every module)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default: 2)")
    parser.add_argument(
        "--scores-only",
        action="store_true",
        help="print the scores of the mutants' last results without running any (a module tested in parts)",
    )
    args = parser.parse_args()
    if not args.scores_only:
        stage()
    chosen = args.modules or modules()
    if not args.scores_only:
        subprocess.run(
            # a prefix runs every mutant under it; a mutant's full name, that mutant alone
            [
                MUTMUT,
                "run",
                "--max-children",
                str(args.max_children),
                *(m if "__mutmut_" in m else f"{m}*" for m in chosen),
            ],
            cwd=STAGE,
            check=False,
        )
    status, same = results(), equivalent()
    print(f"{'module':42} {'killed':>6} {'survived':>8} {'no tests':>8} {'not run':>7} {'equivalent':>10} {'score':>6}")
    for module in chosen:
        mine = {n: s for n, s in status.items() if n.startswith(module)}
        counts = Counter("equivalent" if n in same else s for n, s in mine.items())
        killed = counts["killed"] + counts["timeout"]  # a mutant that hangs the tests is caught too
        judged = sum(v for k, v in counts.items() if k != "equivalent")
        score = killed / judged if judged else float("nan")
        print(
            f"{module:42} {killed:6d} {counts['survived']:8d} {counts['no tests']:8d} {counts['not checked']:7d} "
            f"{counts['equivalent']:10d} {score:6.1%}"
        )
        record(
            "mutation",
            module=module,
            killed=killed,
            survived=counts["survived"],
            no_tests=counts["no tests"],
            not_run=counts["not checked"],  # counted against the score: a partial run scores low
            equivalent=counts["equivalent"],
            score=round(score, 3),
        )


if __name__ == "__main__":
    main()
