"""`cvstudy train` through the real entry point, in a subprocess, against a real MLflow store."""

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CVSTUDY, clean_env, mlflow_runs, run_cli
from tests.trainers.test_data import make_bad


@pytest.mark.slow
def test_train_on_demo_data_records_a_complete_run(tmp_path):
    proc = run_cli(["train", "--model", "resnet50", "--epochs", "1", "--seed", "3", "--device", "cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "embedded demo dataset" in proc.stdout
    (run,) = mlflow_runs(tmp_path, "cvstudy-train")
    assert run.info.status == "FINISHED"
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    for key in (
        "train/loss",
        "val/accuracy",
        "val/balanced_accuracy",
        "val/macro_f1",
        "train/lr",
        "cost/epoch_seconds",
        "cost/images_per_second",
        "test/accuracy",
        "test/balanced_accuracy",
        "test/macro_precision",
        "test/macro_recall",
        "test/macro_f1",
    ):
        assert key in m, key
    # per class: one table, not 40 metrics; its values are scikit-learn's on the logged predictions
    assert not [k for k in m if "_class_" in k]
    from mlflow.tracking import MlflowClient
    from sklearn.metrics import precision_recall_fscore_support

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def artifact(name: str) -> dict:
        return json.loads(Path(client.download_artifacts(run.info.run_id, name, str(tmp_path))).read_text())

    logged = artifact("per_class.json")  # MLflow's table layout: {"columns": [...], "data": [[...], ...]}
    table = {c: [row[i] for row in logged["data"]] for i, c in enumerate(logged["columns"])}
    saved = artifact("test_predictions.json")
    precision, recall, f1, support = precision_recall_fscore_support(
        saved["labels"], saved["predictions"], labels=range(saved["classes"]), zero_division=0
    )
    assert table["test_images"] == support.tolist() and table["class"] == [str(c) for c in range(10)]
    for column, expected in (("test_precision", precision), ("test_recall", recall), ("test_f1", f1)):
        assert table[column] == pytest.approx(expected.tolist(), abs=1e-9), column  # the JSON keeps 10 decimals
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"per_class.json", "per_class.png", "confusion_matrix.png"} <= files  # the table drawn, too
    assert p["model"] == "resnet50" and p["seed"] == "3" and p["epochs"] == "1"
    assert (
        re.fullmatch(r"[0-9a-f]{40}", t["cvstudy.git_sha"])  # the checkout's commit, not "unknown"
        and t["cvstudy.torch_version"].startswith("2.14")
        and t["cvstudy.device"] == "cpu"
        # what ran: the CPU's defaults are fp32, contiguous and eager
        and (t["cvstudy.amp_dtype"], t["cvstudy.memory_format"], t["cvstudy.compiled"])
        == ("float32", "contiguous", "false")
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "confusion_matrix.png", "confusion_matrix.json", "history.json"} <= files
    # the checkpoint is the run's MLflow model (one copy): a pyfunc from code over the safetensors file
    assert "checkpoint" not in files and t["cvstudy.checkpoint"] == "kept"
    model = client.get_logged_model(t["cvstudy.model_id"])
    assert model.source_run_id == run.info.run_id and model.status.to_proto() == 2  # READY
    model_files = list(Path(model.artifact_location.removeprefix("file://")).rglob("*"))
    assert str(tmp_path / "mlruns") in model.artifact_location
    assert {"MLmodel", "pyfunc_model.py", "model.safetensors", "config.json"} <= {f.name for f in model_files}
    assert not [f for f in model_files if f.suffix in (".pkl", ".pickle", ".pt", ".pth")]  # no pickles
    cm = json.loads((tmp_path / "mlruns").joinpath(*_artifact_parts(run), "confusion_matrix.json").read_text())
    assert len(cm["matrix"]) == 10 and sum(map(sum, cm["matrix"])) == 400
    assert (tmp_path / "mlruns").is_dir()  # MLflow's default artifact root, beside mlflow.db


def _artifact_parts(run):
    return run.info.artifact_uri.split("/mlruns/", 1)[1].split("/")


# Torch and MLflow made unimportable: a bad setting or data file must be refused without them.
WITHOUT_TORCH = (
    "import sys; sys.modules['torch'] = sys.modules['mlflow'] = None; "
    "from cvstudy.orchestrator.cli import main; sys.argv = ['cvstudy', *sys.argv[1:]]; main()"
)


def _without_torch(args: list[str], cwd) -> subprocess.CompletedProcess:
    """``cvstudy ARGS`` in a process where importing torch or MLflow fails: what it prints, it printed first."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "object", "unseen_class"])
def test_bad_data_is_refused_in_one_line_before_torch_and_mlflow_load(tmp_path, case):
    """The command line's own wiring, in a subprocess (every other bad file is refused by the same
    ``load_dataset`` in-process, tests/trainers/test_data.py)."""
    filename, message = make_bad(tmp_path / "data", case)
    proc = _without_torch(["train", "--data", "data", "--model", "test_resnet", "--epochs", "1"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert filename in proc.stderr and message in proc.stderr.replace("\n", " ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # checked before any store or run exists


@pytest.mark.slow
def test_a_sweep_on_a_missing_data_directory_is_refused_before_torch_and_mlflow_load(tmp_path):
    proc = _without_torch(["sweep", "--model", "resnet50", "--data", "nowhere", "--trials", "1"], tmp_path)
    assert proc.returncode == 2 and "nowhere: not a directory" in proc.stderr, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_bad_setting_is_refused_before_torch_and_mlflow_load(tmp_path, tiny_data):
    here = tmp_path / "here"
    here.mkdir()
    proc = _without_torch(["train", "--data", str(tiny_data), "--aug", "fancy"], here)
    assert proc.returncode == 2 and "aug must be one of" in proc.stderr, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not list(here.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--aug", "fancy"], "aug must be one of"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--model", "resnet5000"], "unknown model 'resnet5000'"),
        (["--pretrained", "--model", "vit_s16"], "not available offline"),
        (["--weights", "missing.safetensors"], "missing.safetensors: weights file not found"),
        (["--device", "cuda:7"], "device cuda:7 is not available"),
    ],
)
def test_bad_flags_exit_2_before_any_run(tmp_path, tiny_data, monkeypatch, args, message):
    """In process, through the real command-line app (its wiring is the subprocess tests' above)."""
    from typer.testing import CliRunner

    from cvstudy.orchestrator.cli import app

    monkeypatch.chdir(tmp_path)
    for key, value in clean_env(HF_HUB_CACHE=str(tmp_path / "no-cache")).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = CliRunner().invoke(
            app, ["train", "--data", str(tiny_data), "--model", "test_resnet", "--epochs", "1", *args]
        )
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert result.exit_code == 2 and message in result.stderr.replace("\n", " "), result.stderr
    assert "Traceback" not in result.stderr and mlflow_runs(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_the_run_killed_and_exits_130(tmp_path, tiny_data, sig):
    from cvstudy.orchestrator.tracking.client import Tracker

    Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")  # create the store first, so polling it below races nothing
    proc = subprocess.Popen(
        [CVSTUDY, "train", "--data", str(tiny_data), "--model", "resnet50", "--epochs", "50"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the run exists and training has started
        runs = mlflow_runs(tmp_path) if (tmp_path / "mlflow.db").exists() else []
        if runs and "train/loss" in runs[0].data.metrics:
            break
        time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["cvstudy.error"] == "interrupted"


@pytest.mark.slow
def test_resume_continues_an_interrupted_run_in_the_same_mlflow_run(tmp_path, tiny_data):
    from mlflow.tracking import MlflowClient

    from cvstudy.orchestrator.tracking.client import Tracker

    Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = [
        "train",
        "--data",
        str(tiny_data),
        "--model",
        "test_resnet",
        "--epochs",
        "40",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.25",
        "--aug",
        "strong",
    ]
    proc = subprocess.Popen(
        [CVSTUDY, *args], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.time() + 120
    while time.time() < deadline:  # stop it after a few epochs: SIGTERM writes the newest state (held in memory)
        runs = mlflow_runs(tmp_path)
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    (run,) = mlflow_runs(tmp_path)
    run_id, saved = run.info.run_id, int(run.data.tags["cvstudy.state_epoch"])
    assert run.info.status == "KILLED" and 2 <= saved < 40 and f"cvstudy train --resume {run_id}" in out

    # A state damaged on disk (zeroed in the middle, then cut short) is refused, naming the run and the file,
    # and the run is left as it was; the intact bytes resume.
    (state_file,) = [p for p in (tmp_path / "mlruns").rglob("state.safetensors") if run_id in str(p)]
    intact = state_file.read_bytes()
    assert run.data.tags["cvstudy.state_sha256"] == hashlib.sha256(intact).hexdigest()
    middle = len(intact) // 2
    for damaged in (intact[:middle] + bytes(4096) + intact[middle + 4096 :], intact[:-100]):
        state_file.write_bytes(damaged)
        refused = run_cli(["train", "--resume", run_id], tmp_path)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert f"run {run_id}: its resume state state/epoch-{saved:04d}/state.safetensors is damaged" in refused.stderr
        assert mlflow_runs(tmp_path)[0].info.status == "KILLED" and "Traceback" not in refused.stderr
    state_file.write_bytes(intact)

    again = run_cli(["train", "--resume", run_id], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    (run,) = mlflow_runs(tmp_path)  # the same run, not a new one
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and run.data.tags["cvstudy.resumes"] == "1"
    assert "cvstudy.error" not in run.data.tags  # the interruption it resumed from is over
    steps = [m.step for m in client.get_metric_history(run_id, "val/balanced_accuracy")]
    assert sorted(steps) == list(range(40)) and "test/balanced_accuracy" in run.data.metrics  # each epoch once
    assert run.data.tags["cvstudy.state_epoch"].startswith("deleted")
    assert not [a for a in client.list_artifacts(run_id) if a.path == "state"]

    for bad, message in (
        (["train", "--resume", run_id], "finished; there is nothing to resume"),
        (["train", "--resume", "0" * 32], "not found"),
        (["train", "--resume", run_id, "--lr", "0.1"], "--resume continues the run's recorded"),
    ):
        refused = run_cli(bad, tmp_path)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr, (
            refused.stderr
        )


def test_every_config_field_is_a_train_flag_with_its_docstring_as_help():
    import typer

    from cvstudy.orchestrator.cli import app
    from cvstudy.trainers.config import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params}
    docs = TrainConfig.field_docs()
    for key in TrainConfig.keys():
        assert key in options, f"TrainConfig.{key} has no `cvstudy train` flag"
        assert options[key].help.startswith(docs[key])  # then its default, in the flag's spelling
    assert "--grad-clip" in options["grad_clip"].opts and "--no-amp" in options["amp"].secondary_opts
    # every flag parses its value as the field's type (a yes/no flag takes no value)
    types = TrainConfig.value_types()
    given = [
        a for key, (kind, _) in types.items() for a in ["--" + key.replace("_", "-"), "1"][: 1 + (kind is not bool)]
    ]
    parsed = command.make_context("train", given).params
    assert {key: type(parsed[key]) for key in types} == {key: kind for key, (kind, _) in types.items()}


def test_train_help_fits_80_columns_in_a_persons_words_with_every_default(tmp_path):
    """What `cvstudy train --help` shows in an 80-column terminal: nothing cut off, no `<bool>` on yes/no
    flags, no Python words, and each setting's default (``TrainConfig()``'s) as the flag is spelled."""
    from cvstudy.trainers.config import AUG_OPS, TrainConfig

    out = run_cli(["train", "--help"], tmp_path, process=True, COLUMNS="80")
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    for unwanted in ("…", "<bool>", "<str>", "<int>", "<float>", "None", "True", "False"):
        assert unwanted not in out.stdout, unwanted
    assert "--pretrained / --no-pretrained" in out.stdout
    text = " ".join(out.stdout.split())  # the wrapping undone
    for key, value in TrainConfig().to_flat().items():
        flag = key.replace("_", "-")
        if key in AUG_OPS:
            expected = "[default: the --aug preset's]"
        elif value is None:
            continue
        elif isinstance(value, bool):
            expected = f"[default: --{flag}]" if value else f"[default: --no-{flag}]"
        else:
            expected = f"[default: {value}]"
        assert expected in text, (key, expected)


def test_every_option_spells_its_flag_so_no_typer_release_infers_another():
    """typer 0.27 named an option whose metavar was its name in capitals by the metavar (``--MODEL``,
    ``--STUDY``: `cvstudy sweep --model` refused on a lab's GPU image): each option declares its flag."""
    import ast

    import typer

    from cvstudy.orchestrator.cli import app

    source = Path(__file__).resolve().parents[2] / "orchestrator" / "cli" / "app.py"
    unnamed = [
        node.lineno
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "Option"
        and len(node.args) < 2
    ]
    assert not unnamed, f"typer.Option without its flag at app.py lines {unnamed}"
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "set_":
                assert "--" + param.name.replace("_", "-") in param.opts, (name, param.name, param.opts)
