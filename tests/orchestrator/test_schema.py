"""The data contract between cvstudy, MLflow and Optuna is spelled in one module: no other module of
the package (or the benchmarks) writes a tag key, an Optuna attribute name or an MLflow filter."""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from cvstudy.orchestrator.tracking.schema import Role, Tag, cvstudy_name, logged_name, quote, run_filter

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "orchestrator" / "tracking" / "schema.py"
ATTR_CALLS = {"set_user_attr", "enqueue_trial"}


def _docstrings(tree: ast.AST) -> set[int]:
    """Bare string statements: module, class, function and attribute docstrings."""
    return {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}


def _is_module(name: str) -> bool:
    """A dotted name that is an importable module (``mlflow.exceptions``), not a tag key."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is_user_attrs(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "user_attrs"


def strays(source: str) -> list[str]:
    """Places in ``source`` that spell a tag key, a filter or an Optuna attribute name."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
            if (
                re.match(r"^(cvstudy|mlflow)\.[A-Za-z_.]+$", text)
                and not text.endswith((".db", ".lock"))
                and not (_is_module(text))
            ):
                found.append(f"{node.lineno}: tag key {text!r}")
            if "tags.`" in text:
                found.append(f"{node.lineno}: filter {text!r}")
        literal = None
        if isinstance(node, ast.Subscript) and _is_user_attrs(node.value):
            literal = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get" and _is_user_attrs(node.func.value) and node.args:
                literal = node.args[0]
            elif node.func.attr in ATTR_CALLS and node.args:
                literal = node.args[0]
            for kw in node.keywords:
                if kw.arg == "user_attrs" and isinstance(kw.value, ast.Dict):
                    literal = next((k for k in kw.value.keys if isinstance(k, ast.Constant)), literal)
        elif isinstance(node, ast.Compare) and any(_is_user_attrs(c) for c in node.comparators):
            literal = node.left
        if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
            found.append(f"{node.lineno}: Optuna attribute {literal.value!r}")
    return found


def test_the_check_finds_what_it_names():
    bad = """
tags = {"cvstudy.study": name}
client.search_runs([e], "tags.`x` = 'y'")
trial.set_user_attr("mlflow_run_id", run_id)
run_id = trial.user_attrs.get("mlflow_run_id")
config = trial.user_attrs["config"]
if "retry_of" in trial.user_attrs: pass
study.enqueue_trial(params, user_attrs={"baseline": True})
"""
    assert len(strays(bad)) == 7
    assert strays('modules = ("mlflow.exceptions", "mlflow.parentRunId")\n') == ["1: tag key 'mlflow.parentRunId'"]
    assert strays('def f():\n    """Writes the cvstudy.study tag."""\n    return Tag.STUDY\n') == []


@pytest.mark.parametrize(
    "path",
    sorted(p for folder in ("orchestrator", "bench") for p in (ROOT / folder).rglob("*.py") if p != SCHEMA),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_module_but_the_schema_spells_a_key(path):
    assert strays(path.read_text()) == []


def test_filters_quote_what_they_match():
    assert (
        run_filter(study="resnet50", role=Role.TRIAL)
        == "tags.`cvstudy.study` = 'resnet50' and tags.`cvstudy.role` = 'trial'"
    )
    assert quote("bob's study") == '"bob\'s study"'
    with pytest.raises(ValueError):
        quote("""a'b"c""")
    assert Tag.data_digest("val") == "cvstudy.data_digest.val"


# cvstudy's metric names and the names MLflow stores, written out by hand: MLflow's sections are the
# prefix before "/" (train, val, test, cost); names of no section stay as they are.
LOGGED_NAMES = {
    "train_loss": "train/loss",
    "lr": "train/lr",
    "val_balanced_accuracy": "val/balanced_accuracy",
    "val_loss": "val/loss",
    "best_val_balanced_accuracy": "val/best_balanced_accuracy",
    "best_val_balanced_accuracy_std": "val/best_balanced_accuracy_std",
    "test_macro_f1": "test/macro_f1",
    "test_accuracy_ci_low": "test/accuracy_ci_low",
    "test_balanced_accuracy_std": "test/balanced_accuracy_std",
    "peak_memory_mb": "cost/peak_memory_mb",
    "train_device_seconds": "cost/train_device_seconds",
    "train_images_std": "cost/train_images_std",
    "epoch_seconds": "cost/epoch_seconds",
    "images_per_second": "cost/images_per_second",
    "best_gflops": "cost/best_gflops",
    "best_epoch": "best_epoch",
    "epochs_run": "epochs_run",
    "seeds": "seeds",
    "seeds_reporting": "seeds_reporting",
    "objective_mean": "objective_mean",
}


@pytest.mark.parametrize("name", LOGGED_NAMES)
def test_a_metric_is_logged_in_its_mlflow_section_and_read_back_by_either_name(name):
    assert logged_name(name) == LOGGED_NAMES[name]
    assert cvstudy_name(LOGGED_NAMES[name]) == name  # runs logged with sections
    assert cvstudy_name(name) == name  # runs logged before sections existed: flat names


def test_every_metric_a_run_logs_is_in_a_section_but_the_few_of_none(tmp_path, tiny_data):
    """A real run's metrics in MLflow's own client: each in a section, except the named few."""
    from mlflow import MlflowClient

    from tests.conftest import run_cli

    proc = run_cli(["train", "--data", tiny_data, "--model", "test_resnet", "--epochs", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cvstudy-train").experiment_id])
    sections = {key.partition("/")[0] if "/" in key else key for key in run.data.metrics}
    assert sections == {"train", "val", "test", "cost", "best_epoch", "epochs_run"}, sorted(run.data.metrics)
