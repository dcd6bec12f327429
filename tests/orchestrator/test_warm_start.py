"""--warm-start OTHER[:K]: another study's best effective configurations become this study's first trials,
each naming its source; values outside this study's space are refused before anything exists; a rerun
enqueues nothing twice."""

import dataclasses

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from cvstudy.orchestrator.errors import SweepError, UserError
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import Dimension, load_study_spec
from cvstudy.orchestrator.sweep.trials import ranked_complete
from cvstudy.orchestrator.sweep.warmstart import WarmStart, enqueue, parse, plan
from tests.conftest import mlflow_runs, run_cli
from tests.orchestrator.test_sweep import study_file


@pytest.mark.slow
def test_a_warm_start_enqueues_the_best_trials_of_another_study_once(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    source = load_study_spec(
        study_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-2]\n  aug: [none, basic]", "none", "grid", 1)
    )
    sweep(dataclasses.replace(source, name="src"), SweepSettings(storage_url=storage, trials=4))
    best = ranked_complete(optuna.load_study(study_name="src", storage=storage))[:2]

    # this study searches lr only (aug is dropped) over a range that holds the source's best values
    target = load_study_spec(
        study_file(tmp_path, tiny_data, "  lr: {low: 1.0e-3, high: 2.0e-2, log: true}", "none", "random", 1)
    )
    target = dataclasses.replace(target, name="dst")
    sweep(target, SweepSettings(storage_url=storage, trials=3, warm_start="src:2"))
    study = optuna.load_study(study_name="dst", storage=storage)
    first = study.trials[:2]
    assert [t.user_attrs["warm_start"] for t in first] == [f"src/{t.number}" for t in best]
    assert [t.params for t in first] == [{"lr": t.params["lr"]} for t in best]
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "dst")}
    assert [runs[t.user_attrs["mlflow_run_id"]].data.tags["cvstudy.warm_start"] for t in first] == [
        f"src/{t.number}" for t in best
    ]
    assert "warm_start" not in study.trials[2].user_attrs  # then the sampler's own

    sweep(target, SweepSettings(storage_url=storage, trials=5, warm_start="src:2"))  # rerun: nothing enqueued again
    study = optuna.load_study(study_name="dst", storage=storage)
    assert len(study.trials) == 5 and sum("warm_start" in t.user_attrs for t in study.trials) == 2


@pytest.mark.slow
def test_values_outside_the_space_are_refused_before_the_study_exists(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    source = load_study_spec(study_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-2]", "none", "grid", 1))
    sweep(dataclasses.replace(source, name="src"), SweepSettings(storage_url=storage, trials=2))
    narrow = study_file(tmp_path, tiny_data, "  lr: [5.0e-3]", "none", "grid", 1)
    with pytest.raises(SweepError, match=r"--warm-start src: trial \d's lr=0.0\d+ lie outside this study's space"):
        sweep(
            load_study_spec(narrow), SweepSettings(study_name="narrow", storage_url=storage, trials=1, warm_start="src")
        )
    assert "narrow" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]
    proc = run_cli(["sweep", "--study-file", narrow, "--study", "narrow", "--warm-start", "nosuch:2"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no study of that name" in proc.stderr
    assert not [r for r in mlflow_runs(tmp_path, "narrow")]

    # more trials enqueued than the sweep runs: the rest would wait in the study, unrun; refused
    wide = study_file(tmp_path, tiny_data, "  lr: {low: 1.0e-3, high: 2.0e-2, log: true}", "none", "random", 1)
    proc = run_cli(
        ["sweep", "--study-file", wide, "--study", "wide", "--trials", "1", "--warm-start", "src:2"], tmp_path
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "enqueues 2 trial(s), but this sweep has 1 left to run (--trials 1)" in proc.stderr
    assert "wide" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]


def test_a_warm_start_enqueues_what_trained_after_overrides_and_takes_every_trial_when_k_is_larger(
    tmp_path, tiny_data, monkeypatch
):
    """The source's override sets lr for aug=basic after sampling: its runs trained with that lr (MLflow's
    record is the oracle), and that lr, not the sampled one, is what the new study enqueues. K above the
    source's complete trials takes them all, best first."""
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = "  lr: [3.0e-3, 1.0e-2]\n  aug: [none, basic]\noverrides:\n  - when: {aug: basic}\n    set: {lr: 5.0e-3}"
    source = load_study_spec(study_file(tmp_path, tiny_data, space, "none", "grid", 1))
    sweep(dataclasses.replace(source, name="src"), SweepSettings(storage_url=storage, trials=4))
    trained = {  # trial number -> the lr its run trained with, as MLflow recorded it
        int(r.data.tags["cvstudy.trial_number"]): float(r.data.params["lr"])
        for r in mlflow_runs(tmp_path, "src")
        if r.data.tags.get("cvstudy.role") == "trial"
    }
    src = optuna.load_study(study_name="src", storage=storage)
    changed = [t.number for t in src.trials if t.params["aug"] == "basic"]
    assert len(changed) == 2 and all(trained[n] == 5.0e-3 != src.trials[n].params["lr"] for n in changed)

    target = load_study_spec(
        study_file(tmp_path, tiny_data, "  lr: {low: 1.0e-3, high: 2.0e-2, log: true}", "none", "random", 1)
    )
    sweep(dataclasses.replace(target, name="dst"), SweepSettings(storage_url=storage, trials=4, warm_start="src:10"))
    dst = optuna.load_study(study_name="dst", storage=storage)
    order = [t.number for t in ranked_complete(src)]
    assert [t.user_attrs["warm_start"] for t in dst.trials] == [f"src/{n}" for n in order]
    assert [t.params["lr"] for t in dst.trials] == [trained[n] for n in order]


def test_parse_takes_a_study_and_an_ascii_count():
    assert parse("other") == ("other", 3) and parse("other:12") == ("other", 12)
    assert parse("other:1") == ("other", 1)  # the smallest K
    for bad in ("other:0", "other:x", "other:", "other:-2"):
        with pytest.raises(UserError, match="K must be a whole number >= 1"):
            parse(bad)
    with pytest.raises(UserError, match=r"^--warm-start: '\.\./x' is not a usable study name"):
        parse("../x:2")  # a name checked like every other, said with the flag that gave it
    for not_ascii in ("other:²", "other:٣", "other:３"):  # digits to str.isdigit, not counts
        with pytest.raises(UserError, match="K must be a whole number >= 1"):
            parse(not_ascii)


def test_a_dimension_contains_a_value_exactly_at_its_ends_and_of_its_kind():
    lr = Dimension("lr", "float", low=1e-3, high=1e-1, log=True)
    depth = Dimension("depth", "int", low=2, high=8)
    aug = Dimension("aug", "categorical", choices=("none", "basic"))
    assert lr.contains(1e-3) and lr.contains(1e-1) and lr.contains(0.01)
    assert not lr.contains(0.1 * 1.0001) and not lr.contains(9.9e-4)
    assert not lr.contains(True) and not lr.contains("0.01") and not lr.contains(float("nan"))
    assert depth.contains(2) and depth.contains(8.0) and not depth.contains(2.5) and not depth.contains(9)
    assert aug.contains("basic") and not aug.contains("strong")
    stepped = Dimension("lr", "float", low=1e-3, high=1e-2, step=1e-3)
    assert stepped.contains(1e-3) and stepped.contains(4e-3) and stepped.contains(1e-2)
    assert not stepped.contains(0.001473) and not stepped.contains(0.0045)  # between two steps
    evens = Dimension("batch", "int", low=8, high=64, step=8)
    assert evens.contains(32) and not evens.contains(36)


SPACE = "  lr: {low: 1.0e-3, high: 2.0e-2, log: true}\n  aug: [none, basic]"


def _source(storage, values_and_configs, name="src"):
    """A finished study made by hand: each trial's value, the config it trained with (``config``, the
    effective values) and its sampled lr and aug; one pruned trial after them, never enqueued."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "aug": CategoricalDistribution(["none", "basic"])}
    for value, config in values_and_configs:
        sampled = {"lr": 1e-3, "aug": "none"}  # what the sampler drew; ``config``: what trained
        study.add_trial(create_trial(params=sampled, distributions=dists, value=value, user_attrs={"config": config}))
    study.add_trial(create_trial(params={"lr": 1e-3, "aug": "none"}, distributions=dists, state=TrialState.PRUNED))
    return study


def test_plan_takes_the_k_best_effective_configurations_of_the_studys_keys(tmp_path, tiny_data):
    storage = optuna.storages.InMemoryStorage()
    _source(storage, [  # values: trial 1 best, then 2, then 0; "epochs" is not searched here, so not taken
        (0.5, {"lr": 2e-3, "aug": "none", "epochs": 4}),
        (0.9, {"lr": 5e-3, "aug": "basic", "epochs": 4}),
        (0.7, {"lr": 1e-2, "aug": "none", "epochs": 4}),
    ])  # fmt: skip
    spec = load_study_spec(study_file(tmp_path, tiny_data, SPACE, "none", "random", 1))
    warm = plan(spec, storage, "src:2", "dst", target=5)
    assert warm == WarmStart(
        "src",
        (
            ({"lr": 5e-3, "aug": "basic"}, {"warm_start": "src/1"}),
            ({"lr": 1e-2, "aug": "none"}, {"warm_start": "src/2"}),
        ),
    )
    assert warm.key == "src:2"
    assert [p for p, _ in plan(spec, storage, "src", "dst", target=5).trials] == [  # K = 3 by default
        {"lr": 5e-3, "aug": "basic"}, {"lr": 1e-2, "aug": "none"}, {"lr": 2e-3, "aug": "none"}
    ]  # fmt: skip
    assert len(plan(spec, storage, "src:9", "dst", target=5).trials) == 3  # K above what completed: all


def test_plan_refuses_in_one_line_what_cannot_be_warm_started(tmp_path, tiny_data):
    storage = optuna.storages.InMemoryStorage()
    _source(storage, [(0.5, {"lr": 0.05, "aug": "none"})])  # lr above this space's 2e-2
    _source(storage, [(0.5, {"lr": 0.05, "aug": "strong"})], name="both")  # and an aug it does not search
    optuna.create_study(study_name="empty", storage=storage)
    path = study_file(tmp_path, tiny_data, SPACE, "none", "random", 1)
    spec = load_study_spec(path)
    cases = [
        ("dst:1", UserError, "--warm-start dst: a study cannot warm-start from itself"),
        ("nosuch:1", SweepError, "--warm-start nosuch: no study of that name in the storage"),
        ("empty:1", SweepError, "--warm-start empty: that study has no complete trial"),
        ("src:1", SweepError, f"--warm-start src: trial 0's lr=0.05 lie outside this study's space ({path}); "
         "widen the space or warm-start from fewer trials (OTHER:K)"),
        ("both:1", SweepError, f"--warm-start both: trial 0's lr=0.05, aug='strong' lie outside this study's "
         f"space ({path}); widen the space or warm-start from fewer trials (OTHER:K)"),
    ]  # fmt: skip
    for text, error, message in cases:  # into a study named dst
        with pytest.raises(error) as refused:
            plan(spec, storage, text, "dst", target=5)
        assert str(refused.value) == message


def test_plan_fits_what_it_enqueues_into_the_trials_the_sweep_has_left(tmp_path, tiny_data):
    """A sweep of --trials 4 into a study with 1 complete, 1 running and 1 waiting trial has 1 left: one
    warm-started trial fits, two are refused; a study already warm-started from the source is not counted
    again (a rerun enqueues nothing), even with nothing left."""
    storage = optuna.storages.InMemoryStorage()
    _source(storage, [(0.5, {"lr": 2e-3, "aug": "none"}), (0.6, {"lr": 3e-3, "aug": "none"})])
    spec = load_study_spec(study_file(tmp_path, tiny_data, SPACE, "none", "random", 1))
    assert len(plan(spec, storage, "src:2", "dst", target=2).trials) == 2  # no study yet: the whole target
    with pytest.raises(UserError) as refused:
        plan(spec, storage, "src:2", "dst", target=1)
    assert str(refused.value) == (
        "--warm-start src:2: enqueues 2 trial(s), but this sweep has 1 left to run (--trials 1); warm-start from "
        "at most 1 (OTHER:K), or raise --trials"
    )
    dst = optuna.create_study(study_name="dst", storage=storage, direction="maximize")
    dst.add_trial(create_trial(params={}, distributions={}, value=0.1))
    dst.ask()  # running
    dst.enqueue_trial({"lr": 4e-3})  # waiting
    assert len(plan(spec, storage, "src:1", "dst", target=4).trials) == 1
    with pytest.raises(UserError, match=r"enqueues 2 trial\(s\), but this sweep has 1 left to run \(--trials 4\)"):
        plan(spec, storage, "src:2", "dst", target=4)
    with pytest.raises(UserError, match=r"this sweep has 0 left to run \(--trials 2\); warm-start from at most 0"):
        plan(spec, storage, "src:1", "dst", target=2)  # 3 taken of 2: none left, said as 0
    dst.set_user_attr("warm_starts", ["other:1", "src:2"])
    assert len(plan(spec, storage, "src:2", "dst", target=2).trials) == 2


def test_enqueue_puts_the_trials_first_once_per_source():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="dst", storage=storage, direction="maximize")
    study.set_user_attr("warm_starts", ["other:1"])
    warm = WarmStart("src", (({"lr": 5e-3}, {"warm_start": "src/1"}), ({"lr": 1e-2}, {"warm_start": "src/2"})))
    assert enqueue(study, warm) == 2
    asked = [study.ask() for _ in range(2)]  # the enqueued trials come first, their lr fixed
    assert [(t.suggest_float("lr", 1e-4, 1e-1, log=True), t.user_attrs) for t in asked] == [
        (5e-3, {"warm_start": "src/1"}), (1e-2, {"warm_start": "src/2"})
    ]  # fmt: skip
    assert study.user_attrs["warm_starts"] == ["other:1", "src:2"]
    assert enqueue(study, WarmStart("src", warm.trials[:1])) == 0  # the same source again, any K: nothing
    assert len(study.get_trials()) == 2 and study.user_attrs["warm_starts"] == ["other:1", "src:2"]
    assert enqueue(study, WarmStart("sr", warm.trials[:1])) == 1  # a name that only begins the same is another
