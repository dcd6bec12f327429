"""The trial lifecycle: retries on the public API, effective configurations, per-trial data, checkpoint
retention, the report's cross-check and the stale-heartbeat path."""

import ast
import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cvstudy.orchestrator.commands.predict import predict
from cvstudy.orchestrator.commands.report import report
from cvstudy.orchestrator.errors import PredictError
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.sweep.trials import count_trials, stale_callback
from tests.conftest import mlflow_runs, run_cli, start_mlflow_server, wait_for, wait_for_http
from tests.orchestrator.test_sweep import GOOD_THEN_BAD, enqueue_first, study_file

ORCHESTRATOR = Path(__file__).resolve().parents[2] / "orchestrator"


DOCUMENTED_UNDERSCORES = {"_exit"}  # os._exit: public and documented, despite its name


def _private_uses(path: Path) -> list[str]:
    """Where ``path`` reaches into a private name: ``x._name`` on anything but ``self``/``cls``, an import
    from a module with a ``_`` component (``optuna._heartbeat``), or an imported ``_name``."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Attribute) and not (
            isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        ):
            names = [node.attr]
        elif isinstance(node, ast.ImportFrom):
            names = (node.module or "").split(".") + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [part for a in node.names for part in a.name.split(".")]
        if any(n.startswith("_") and not n.endswith("__") and n not in DOCUMENTED_UNDERSCORES for n in names):
            hits.append(f"{path.name}:{node.lineno}")
    return hits


def test_the_product_uses_libraries_through_their_public_api_only(tmp_path):
    """Optuna's private ``study._storage`` / ``trial._trial_id`` and the like change between releases;
    checked on every file of both packages, and on a file written to break the rule each way."""
    offender = tmp_path / "offender.py"
    offender.write_text("from optuna._heartbeat import x\nfrom a import _b\nimport c._d\nstudy._storage\nself._ok\n")
    assert _private_uses(offender) == ["offender.py:1", "offender.py:2", "offender.py:3", "offender.py:4"]
    hits = [
        hit
        for package in (ORCHESTRATOR, ORCHESTRATOR.parent / "trainers")
        for p in package.rglob("*.py")
        for hit in _private_uses(p)
    ]
    assert hits == []


def _trial_runs(tmp_path, name="tiny"):
    return {
        int(r.data.tags["cvstudy.trial_number"]): r
        for r in mlflow_runs(tmp_path, name)
        if "cvstudy.trial_number" in r.data.tags
    }


@pytest.mark.slow
def test_hyperband_prunes_without_test_metrics_or_checkpoints_and_only_the_best_checkpoints_stay(
    tmp_path, tiny_data, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    # lr 1e-9 never learns, so Hyperband stops those trials; seeds vary the split and the weights.
    spec = load_study_spec(
        study_file(
            tmp_path,
            tiny_data,
            "  lr: [3.0e-3, 1.0e-9]\n  seed: [0, 1, 2]",
            pruner="hyperband",
            sampler="grid",
            epochs=4,
        )
    )
    enqueue_first(f"sqlite:///{tmp_path / 'optuna.db'}", GOOD_THEN_BAD)
    outcome = sweep(
        dataclasses.replace(spec, keep_checkpoints=2),
        SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=6),
    )
    assert outcome.counts.done == 6 and outcome.counts.pruned >= 1
    runs = _trial_runs(tmp_path)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.metric_names == ["val_balanced_accuracy"]  # what optuna-dashboard shows
    for t in study.trials:
        run = runs[t.number]
        has_checkpoint = _model_file(run) is not None
        if t.state == TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["cvstudy.trial_state"] == "PRUNED"
            assert not any(k.startswith("test/") for k in run.data.metrics) and not has_checkpoint
            assert run.data.metrics["epochs_run"] == int(run.data.tags["cvstudy.pruned_at_epoch"]) < 4
    ranked = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    kept = {t.number for t in ranked[:2]}
    on_disk = {n for n, r in runs.items() if _model_file(r) is not None}
    assert (
        on_disk == kept
        and len(list(tmp_path.glob("mlruns/*/models/*/artifacts/artifacts/checkpoint/model.safetensors"))) == 2
    )
    for t in ranked[2:]:
        assert runs[t.number].data.tags["cvstudy.checkpoint"].startswith("deleted")
        with pytest.raises(PredictError, match="checkpoint was pruned from storage"):
            predict(run_id=runs[t.number].info.run_id, out=str(tmp_path / "p.csv"))
    # Every trial trained on the split its own seed names: the same seed, the same validation data.
    digest = {t.number: runs[t.number].data.tags["cvstudy.data_digest.val"] for t in study.trials}
    by_seed = {}
    for t in study.trials:
        by_seed.setdefault(t.params["seed"], set()).add(digest[t.number])
    assert all(len(v) == 1 for v in by_seed.values()) and len(set.union(*by_seed.values())) == 3
    for t in study.trials:  # the same splits as MLflow dataset inputs (the UI's Dataset column)
        inputs = {i.tags[0].value: i.dataset for i in runs[t.number].inputs.dataset_inputs}
        assert sorted(inputs) == ["test", "train", "val"]
        assert inputs["val"].digest == digest[t.number] and inputs["train"].name == "data-train"
        assert sum(json.loads(inputs["val"].profile)["class_counts"]) == json.loads(inputs["val"].profile)["num_images"]
    # ... and its own initialisation and batch order: the same lr under three seeds trains three different
    # models (three different first-epoch training losses).
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    first_loss = {
        t.params["seed"]: client.get_metric_history(runs[t.number].info.run_id, "train/loss")[0].value
        for t in study.trials
        if t.params["lr"] == 3.0e-3
    }
    assert sorted(first_loss) == [0, 1, 2] and len(set(first_loss.values())) == 3


@pytest.mark.slow
def test_what_ran_is_what_is_recorded_and_the_report_fails_on_a_mismatch(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "override.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: ovr
        sampler: grid
        pruner: none
        fixed: {{model: test_resnet, epochs: 1, batch_size: 8, data: {tiny_data}, val_fraction: 0.25}}
        space:
          optimizer: [sgd, adamw]
          aug: [basic, none]
        overrides:
          - when: {{optimizer: sgd}}
            set: {{aug: none, lr: 0.01}}
        """)
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep(load_study_spec(path), SweepSettings(storage_url=storage))
    study = optuna.load_study(study_name="ovr", storage=storage)
    changed = next(t for t in study.trials if t.params == {"optimizer": "sgd", "aug": "basic"})
    assert changed.user_attrs["config"]["aug"] == "none"
    runs = _trial_runs(tmp_path, "ovr")
    assert runs[changed.number].data.params["aug"] == "none"
    result = report(["ovr"], storage_url=storage, out=str(tmp_path / "rep"))
    assert result.problems == []
    rows = (tmp_path / "rep" / "trials.csv").read_text().splitlines()
    row = next(r for r in rows if r.startswith(f"ovr,{changed.number},"))
    assert ",none,sgd," in row and "aug: sampled basic -> none" in row  # effective value, and shown as changed
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "aug sampled basic -> none" in md
    assert "optimizer=sgd, aug=basic" not in md  # the sampled value is never shown as what trained

    # A run deleted behind Optuna's back: the report is still written, lists it, and exits 1.
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").delete_run(runs[0].info.run_id)
    proc = run_cli(["report", "ovr", "--out", "rep2"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert "not found among study ovr's runs" in (tmp_path / "rep2" / "report.md").read_text()


STALE_WORKER = """
import os, sys, optuna
storage = optuna.storages.RDBStorage(sys.argv[1], heartbeat_interval=1, grace_period=2)
study = optuna.load_study(study_name="stale", storage=storage)
def objective(trial):
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.set_user_attr("mlflow_run_id", sys.argv[2])
    os.kill(os.getpid(), 9)   # the worker dies mid-trial: no tell, no cleanup, its heartbeat stops
study.optimize(objective, n_trials=1)
"""


@pytest.mark.slow
def test_a_trial_whose_heartbeat_stopped_is_failed_requeued_and_its_run_killed(tmp_path):
    url, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("stale"), tags={"cvstudy.trial_number": "0"})
    optuna.create_study(study_name="stale", storage=url)
    proc = subprocess.run([sys.executable, "-c", STALE_WORKER, url, run.info.run_id], capture_output=True, timeout=120)
    assert proc.returncode == -9
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=1, grace_period=2, heartbeat_stale_trial_callback=stale_callback(uri)
    )
    study = optuna.load_study(study_name="stale", storage=storage)

    def failed_as_stale() -> bool:  # once its heartbeat is older than the grace period, whenever that is
        optuna.storages.fail_stale_trials(study)
        return len(study.get_trials()) == 2

    wait_for(failed_as_stale, timeout=60, every=0.5)
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert count_trials(study).retried == 1 and count_trials(study).failed == 0
    after = client.get_run(run.info.run_id)
    assert after.info.status == "KILLED" and after.data.tags["cvstudy.trial_state"] == "INTERRUPTED"
    assert after.data.tags["cvstudy.error"] == "heartbeat stale"
    optuna.storages.fail_stale_trials(study)  # found again: re-queued once only
    assert len(study.get_trials()) == 2


JOURNAL_WORKER = """
import os, sys, time, optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
study = optuna.load_study(study_name="lost", storage=JournalStorage(JournalFileBackend(sys.argv[1])))
def objective(trial):
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.set_user_attr("mlflow_run_id", sys.argv[2])
    trial.set_user_attr("host", "another-node")   # a worker on another machine of the cluster
    trial.set_user_attr("pid", 12345)
    trial.set_user_attr("heartbeat", time.time() - 3600)   # its last beat, an hour ago
    os.kill(os.getpid(), 9)
study.optimize(objective, n_trials=1)
"""


@pytest.mark.slow
def test_a_journal_trial_whose_worker_stopped_beating_resumes_from_its_saved_state(tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from cvstudy.orchestrator.sweep.storage import open_storage
    from cvstudy.orchestrator.sweep.trials import fail_lost_trials

    journal, uri = tmp_path / "study.journal", f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("lost"), tags={"cvstudy.state_epoch": "3"})
    optuna.create_study(study_name="lost", storage=JournalStorage(JournalFileBackend(str(journal))))
    proc = subprocess.run(
        [sys.executable, "-c", JOURNAL_WORKER, str(journal), run.info.run_id], capture_output=True, timeout=120
    )
    assert proc.returncode == -9
    study = optuna.load_study(study_name="lost", storage=open_storage(f"journal:///{journal}"))
    assert fail_lost_trials(study, client) == [0]
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.user_attrs == {"retry_of": 0, "retries": 0, "resume_run_id": run.info.run_id, "resume_epoch": 3}
    after = client.get_run(run.info.run_id)
    assert after.info.status == "KILLED" and after.data.tags["cvstudy.error"].startswith("heartbeat stale")
    assert fail_lost_trials(study, client) == [] and len(study.get_trials()) == 2


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.long
def test_checkpoint_retention_deletes_from_a_tracking_servers_artifact_store(tmp_path, tiny_data, monkeypatch):

    monkeypatch.chdir(tmp_path)
    artifacts = tmp_path / "server-artifacts"
    server, port = start_mlflow_server(tmp_path / "server.db", artifacts)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, what="mlflow server")
        spec = load_study_spec(
            study_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-3, 5.0e-3]", pruner="none", sampler="grid", epochs=1)
        )
        outcome = sweep(
            dataclasses.replace(spec, keep_checkpoints=1),
            SweepSettings(
                storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=3, tracking_uri=f"http://127.0.0.1:{port}"
            ),
        )
        assert outcome.counts.complete == 3
        assert len(list(artifacts.rglob("checkpoint/model.safetensors"))) == 1  # inside the kept trial's MLflow model
        client = MlflowClient(f"http://127.0.0.1:{port}")
        runs = client.search_runs(
            [client.get_experiment_by_name("tiny").experiment_id], "tags.`cvstudy.checkpoint` != ''"
        )
        assert sorted(r.data.tags["cvstudy.checkpoint"][:7] for r in runs) == ["deleted", "deleted", "kept"]
        kept = next(r for r in runs if r.data.tags["cvstudy.checkpoint"] == "kept")
        assert kept.info.run_id == outcome.best.user_attrs["mlflow_run_id"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _model_file(run):
    """The safetensors file inside the run's logged model, if it is still on disk."""
    model_id = run.data.tags.get("cvstudy.model_id")
    if not model_id:
        return None
    root = Path(run.info.artifact_uri.removeprefix("file://")).parents[1] / "models" / model_id
    found = list(root.rglob("checkpoint/model.safetensors"))
    return found[0] if found else None


class CountingStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, counting the heartbeats recorded through it (the state the test waits for)."""

    beats = 0

    def record_heartbeat(self, trial_id: int) -> None:
        super().record_heartbeat(trial_id)
        self.beats += 1


@pytest.mark.slow
def test_a_workers_heartbeat_is_optunas_own_on_an_rdb_storage_and_stops_with_its_trial(tmp_path):
    """Workers ask and tell, and Optuna beats only inside ``study.optimize``: cvstudy's ``Heartbeat``
    records Optuna's heartbeat, so Optuna's own ``fail_stale_trials`` (the oracle) leaves a beating trial
    alone once its grace period has passed, and fails it once the beat stops (its worker gone). Interval
    1 s, grace 2 s: four beats span at least the grace period."""
    from cvstudy.orchestrator.sweep.storage import Heartbeat

    storage = CountingStorage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="beats", storage=storage)
    trial = study.ask()
    with Heartbeat(storage, study, trial):
        wait_for(lambda: storage.beats >= 4, timeout=60, every=0.2)  # the first at once, then one a second
        optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state == TrialState.RUNNING
    stopped = time.time()

    def failed() -> bool:
        optuna.storages.fail_stale_trials(study)
        return study.trials[0].state == TrialState.FAIL

    wait_for(failed, timeout=60, every=0.5)
    assert time.time() - stopped >= 1  # not before its grace period ran out (less the last beat's age)
