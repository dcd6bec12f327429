"""A study over augmentation operations: each operation is a search dimension, its effective value is in
every trial's MLflow params and in trials.csv, and the report says which operations mattered."""

import csv
import random
from types import SimpleNamespace

import optuna
import pytest

from cvstudy.orchestrator.commands.report import report
from cvstudy.orchestrator.report.augmentation import operation_effects
from cvstudy.orchestrator.report.data import TrialRow, effective_operations
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.trainers.config import COST_METRICS
from tests.conftest import mlflow_runs
from tests.orchestrator.test_sweep import study_file


@pytest.mark.slow
def test_a_study_over_hflip_and_rotate_records_and_reports_both(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = "  hflip: [0.0, 0.5]\n  rotate: {low: 0.0, high: 30.0}\n  aug: [none, original]"
    path = study_file(tmp_path, tiny_data, space=space, pruner="none", sampler="random", epochs=1)
    # an override conditions on an operation: no vertical flips where there is no horizontal one
    path.write_text(path.read_text() + "overrides:\n  - when: {hflip: 0.0}\n    set: {vflip: 0.0}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep(load_study_spec(path), SweepSettings(storage_url=storage, trials=5))

    study = optuna.load_study(study_name="tiny", storage=storage)
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "tiny")}
    for t in study.trials:
        params = runs[t.user_attrs["mlflow_run_id"]].data.params
        assert {f"cost/{k}" for k in COST_METRICS} <= set(
            runs[t.user_attrs["mlflow_run_id"]].data.metrics
        )  # every run's cost
        assert float(params["hflip"]) == t.params["hflip"] and float(params["rotate"]) == t.params["rotate"]
        preset_vflip = 0.2 if t.params["aug"] == "original" else 0.0
        assert float(params["vflip"]) == (0.0 if t.params["hflip"] == 0.0 else preset_vflip)
        assert float(params["erase"]) == (0.5 if t.params["aug"] == "original" else 0.0)  # the preset's own

    result = report(["tiny"], storage_url=storage)
    with open(result.paths["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert {"hflip", "rotate", "vflip", "erase", "crop_pad", "trivial"} <= set(rows[0])
    by_trial = {int(r["trial"]): r for r in rows}
    for t in study.trials:
        assert float(by_trial[t.number]["rotate"]) == t.params["rotate"]
        assert float(by_trial[t.number]["vflip"]) == t.user_attrs["config"]["vflip"]
    md = result.paths["md"].read_text()
    section = md.split("### Augmentation operations", 1)[1].split("\n#", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    named = {line.split("|")[1].strip() for line in table[1:]}
    assert {"hflip", "rotate", "erase"} <= named  # erase varies through the preset
    assert (result.paths["md"].parent / "tiny-operations.png").exists()


def test_operation_effects_find_the_operation_that_moves_the_objective():
    """Synthetic trials: the objective rises with hflip and ignores rotate; erase never varies."""
    rng = random.Random(0)
    rows = []
    for n in range(40):
        hflip, rotate = rng.choice([0.0, 0.25, 0.5]), rng.uniform(0, 30)
        ops = {**effective_operations({"aug": "none"}), "hflip": hflip, "rotate": rotate}
        rows.append(TrialRow("s", n, "COMPLETE", 0.5 + hflip + rng.gauss(0, 0.01), {}, None, augmentation=ops))
    effects = operation_effects(SimpleNamespace(rows=rows, complete=rows, direction="maximize"))  # all complete
    assert [e.op for e in effects] == ["hflip", "rotate"]  # most important first; erase never varied
    hflip, rotate = effects
    assert hflip.importance > 0.9 and rotate.importance < 0.1
    assert [label for label, *_ in hflip.levels] == ["0.000", "0.250", "0.500"]
    assert sum(n for *_, n in hflip.levels) == 40 and sum(n for *_, n in rotate.levels) == 40
    assert len(rotate.levels) == 4  # a continuous value in quartile bins
    mean, best = hflip.levels[2][1:3]
    assert mean == pytest.approx(1.0, abs=0.01) and best >= mean
