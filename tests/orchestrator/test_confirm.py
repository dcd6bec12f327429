"""`cvstudy confirm`: the study's winners retrained with fresh seeds, statistics per configuration and per
pair, resumable after SIGKILL; and the report flags runs that did not train on the same data."""

import json
import math
import re
import signal
import statistics
import subprocess
from itertools import combinations
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.tracking.schema import run_metrics
from tests.conftest import CVSTUDY, clean_env, make_arrays, mlflow_runs, run_cli, wait_for, write_dataset
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)


def _confirm_runs(tmp_path, role=None):
    runs = mlflow_runs(tmp_path, "tiny-confirm")
    return [r for r in runs if role is None or r.data.tags.get("cvstudy.role") == role]


def test_confirm_retrains_the_winners_with_fresh_seeds_and_resumes_after_sigkill(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-2, 1.0e-9]", sampler="grid", pruner="none", epochs=8)
    path.write_text(path.read_text() + "baseline: {lr: 1.0e-9}\n")
    sweep(load_study_spec(path), SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=3))

    # --top 2 plus the baseline trial (0, enqueued first; lr 1e-9 never learns, so not among the top 2); 3 seeds each
    proc = subprocess.Popen(
        [CVSTUDY, "confirm", "tiny", "--top", "2", "--seeds", "3"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seeds_of = lambda status: [r for r in _confirm_runs(tmp_path, "confirm_seed") if r.info.status == status]  # noqa: E731
    assert wait_for(lambda: len(seeds_of("FINISHED")) >= 1 and len(seeds_of("RUNNING")) == 1, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = seeds_of("RUNNING")[0]

    rerun = run_cli(["confirm", "tiny", "--top", "2", "--seeds", "3"], tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # off a terminal, each seed's run says its first and last epoch with its ETA
    said = re.findall(r"^\[\d+/\d+\] trial-\d+.* seed \d+ epoch (\d+)/8: .* in; run ETA \S+$", rerun.stdout, re.M)
    assert "1" in said and "8" in said, rerun.stdout
    configs = _confirm_runs(tmp_path, "confirm_config")
    seeds = _confirm_runs(tmp_path, "confirm_seed")
    assert len(_confirm_runs(tmp_path, "confirm")) == 1 and len(configs) == 3
    assert {c.data.tags["cvstudy.confirms_trial"] for c in configs} == {"0", "1", "2"}
    assert [c.data.tags["cvstudy.baseline"] for c in configs].count("true") == 1
    # exactly one FINISHED run per configuration and seed; the killed one says it was interrupted; none RUNNING
    finished = [
        (s.data.tags["mlflow.parentRunId"], s.data.tags["cvstudy.seed"]) for s in seeds if s.info.status == "FINISHED"
    ]
    assert len(finished) == len(set(finished)) == 9
    assert {s.data.tags["cvstudy.seed"] for s in seeds} == {"1000", "1001", "1002"}
    assert not [s for s in seeds if s.info.status == "RUNNING"]
    again = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(killed.info.run_id)
    assert again.info.status == "KILLED" and again.data.tags["cvstudy.trial_state"] == "INTERRUPTED"
    assert len(seeds) == 10  # 9 finished + the one SIGKILL interrupted: nothing trained twice to completion
    assert not [s for s in seeds if "cvstudy.model_id" in s.data.tags]  # statistics only: no checkpoints kept

    # per configuration: mean, std and the t interval of its seeds' test metrics
    per_config = {}
    trial_runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "tiny")}
    for c in configs:
        values = {
            s.data.tags["cvstudy.seed"]: s.data.metrics["test/balanced_accuracy"]
            for s in seeds
            if s.data.tags["mlflow.parentRunId"] == c.info.run_id and s.info.status == "FINISHED"
        }
        per_config[c.data.tags["cvstudy.confirms_trial"]] = values
        m = run_metrics(c)
        v = list(values.values())
        assert m["test_balanced_accuracy"] == pytest.approx(statistics.mean(v), abs=1e-12)
        assert m["test_balanced_accuracy_std"] == pytest.approx(statistics.stdev(v), abs=1e-12)
        half = stats.t.ppf(0.975, 2) * statistics.stdev(v) / 3**0.5
        assert m["test_balanced_accuracy_ci_low"] == pytest.approx(statistics.mean(v) - half, abs=1e-9)
        assert {"test_accuracy_std", "test_macro_f1_ci_high"} <= set(m) and c.info.status == "FINISHED"
        # fresh seeds, same validation split as the trial it confirms
        confirmed = trial_runs[c.data.tags["cvstudy.trial_run_id"]]
        for s in seeds:
            if s.data.tags["mlflow.parentRunId"] == c.info.run_id and s.info.status == "FINISHED":
                assert s.data.params["seed"] in {"1000", "1001", "1002"}
                assert s.data.params["seed"] != confirmed.data.params["seed"]
                assert s.data.tags["cvstudy.data_digest.val"] == confirmed.data.tags["cvstudy.data_digest.val"]
    # a paired test for each pair, on the same seeds
    parent = _confirm_runs(tmp_path, "confirm")[0]
    summary = json.loads(
        Path(
            MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").download_artifacts(
                parent.info.run_id, "confirmation.json"
            )
        ).read_text()
    )
    assert len(summary["comparisons"]) == len(list(combinations(configs, 2))) == 3
    label_trial = {c["label"]: str(c["trial"]) for c in summary["configurations"]}
    for comp in summary["comparisons"]:
        a, b = per_config[label_trial[comp["a"]]], per_config[label_trial[comp["b"]]]
        seeds_ = sorted(a)
        diffs = [a[s] - b[s] for s in seeds_]
        assert comp["difference"]["mean"] == pytest.approx(statistics.mean(diffs), abs=1e-12)
        expected = stats.ttest_rel([a[s] for s in seeds_], [b[s] for s in seeds_]).pvalue
        if all(d == 0 for d in diffs) or math.isnan(expected):  # no difference, or none to test: p = 1
            expected = 1.0
        assert comp["p_value"] == pytest.approx(expected)
    # three comparisons: one family, Holm-adjusted (statsmodels' implementation as the oracle)
    raw = [comp["p_value"] for comp in summary["comparisons"]]
    holm = multipletests(raw, alpha=0.05, method="holm")
    assert [comp["p_value_holm"] for comp in summary["comparisons"]] == pytest.approx(list(holm[1]), abs=1e-12)
    assert "Holm" in summary["correction"] and "3 comparisons" in rerun.stdout
    assert "paired t-test p =" in rerun.stdout and "Holm-adjusted p =" in rerun.stdout
    # rerunning trains nothing more
    third = run_cli(["confirm", "tiny", "--top", "2", "--seeds", "3"], tmp_path)
    assert third.returncode == 0 and "(0 runs to train)" in third.stdout
    assert len(_confirm_runs(tmp_path, "confirm_seed")) == 10
    # the report shows the confirmation, its spread and the single-seed warning of the study itself
    report = run_cli(["report", "tiny"], tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    md = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert "Single-seed ranking" in md and "### Confirmation with fresh seeds" in md and "tiny-spread.png" in md
    assert "(n=3)" in md and "paired t-test" in md and "3 comparisons, one family" in md and "Holm-adjusted p" in md
    # the terminal's table and the report's carry the same cells: each configuration's mean ± std as written
    for config in summary["configurations"]:
        values = list(config["per_seed"]["balanced_accuracy"].values())
        cell = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert cell in md and cell in third.stdout, (cell, third.stdout)


def test_confirm_refuses_unknown_studies_in_one_line(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep(
        load_study_spec(study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", sampler="grid", pruner="none", epochs=1)),
        SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=1),
    )
    for args, message in (
        (["confirm", "nope"], "no study named 'nope'"),
        (["confirm", "tiny", "--seeds", "1"], "--seeds >= 2"),
    ):
        out = run_cli(args, tmp_path)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not _confirm_runs(tmp_path)


def test_the_report_flags_runs_on_different_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = write_dataset(tmp_path / "a", make_arrays(seed=0))
    b = write_dataset(tmp_path / "b", make_arrays(seed=1))
    path = study_file(tmp_path, a, f"  data: ['{a}', '{b}']", sampler="grid", pruner="none", epochs=1)
    sweep(load_study_spec(path), SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=2))
    out = run_cli(["report", "tiny"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 different datasets" in out.stdout
    md = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| study | trial"))
    assert header.rstrip(" |").endswith("data")
    rows = [line for line in md.splitlines() if line.startswith("| tiny |")]
    assert sorted(line.rstrip(" |").rsplit("| ", 1)[1].strip() for line in rows[:2]) == ["A", "B"]


def _trials(values_and_baseline):
    """Complete trials of a maximised objective, best first, as ``ranked_complete`` gives them."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    trials = [
        create_trial(
            params={"lr": 0.1},
            distributions={"lr": FloatDistribution(0, 1)},
            value=value,
            user_attrs={"baseline": True} if is_baseline else {},
        )
        for value, is_baseline in values_and_baseline
    ]
    for number, t in enumerate(trials):
        t.number = number
    return trials


@pytest.mark.parametrize(
    ("values", "top", "chosen", "said"),
    [
        # the baseline is the best: --top 1 still picks one configuration to compare with it
        ([(0.9, True), (0.8, False), (0.7, False)], 1, [1, 0], None),
        ([(0.9, False), (0.8, True), (0.7, False)], 2, [0, 2, 1], None),
        ([(0.9, False), (0.8, True)], 3, [0, 1], "1 complete trial(s) besides its baseline, fewer than --top 3"),
        ([(0.9, True)], 2, [0], "no complete trial besides its baseline"),
        ([(0.9, False), (0.8, False)], 3, [0, 1], "2 complete trial(s), fewer than --top 3"),  # no baseline
    ],
)
def test_top_counts_the_configurations_compared_with_the_baseline(values, top, chosen, said):
    from cvstudy.orchestrator.commands.confirm import configurations

    ranked = _trials(values)
    baseline = next((t for t in ranked if t.user_attrs.get("baseline")), None)
    picked, note = configurations(ranked, baseline, top)
    assert [t.number for t in picked] == chosen
    assert (note is None) if said is None else (said in note)
