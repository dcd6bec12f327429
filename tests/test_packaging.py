"""The package as a user installs it: a wheel, in a fresh virtual environment, used from another directory.

The fresh environment takes cvstudy from the wheel only; its dependencies (torch and the rest, gigabytes)
come from this test environment's site-packages through a path entry, which adds the directory but not
its .pth files, so this checkout's editable install does not leak in (the test checks where
``cvstudy.orchestrator`` and the shipped studies are imported from)."""

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import mlflow
import pytest

from tests.conftest import clean_env, make_arrays, write_dataset

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".venv",
    ".git",
    "mlruns",
    "*.db",
    "*.lock",
    "reports",
    "slurm",
    "__pycache__",
    "build",
    "*.egg-info",
    ".pytest_cache",
    "data",
    "bench",
    "tests",
    "docs",
    ".whl",
    ".gl",
)


@pytest.mark.long
def test_the_wheel_installs_and_sweeps_a_shipped_study_from_another_directory(tmp_path):
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=SKIP)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("cvstudy-*.whl")

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    fresh_site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (fresh_site / "deps-of-the-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    before = {p.name for p in fresh_site.iterdir()}
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0, installed.stderr
    # one name in site-packages: no generic orchestrator/, trainers/ or studies/ to collide with another's
    added = {p.name for p in fresh_site.iterdir()} - before
    assert added == {"cvstudy", wheel.name.split("-py")[0] + ".dist-info"}, added
    installed_package = fresh_site / "cvstudy"
    packaged = {str(p.relative_to(installed_package).parent) for p in installed_package.rglob("__init__.py")}
    in_repo = {".", "studies"} | {
        str(p.relative_to(ROOT).parent) for d in ("orchestrator", "trainers") for p in (ROOT / d).rglob("__init__.py")
    }
    assert packaged == in_repo  # pyproject.toml lists every subpackage

    work = tmp_path / "elsewhere"
    data = write_dataset(work / "mydata", make_arrays())
    where = subprocess.run(
        [
            python,
            "-c",
            "import cvstudy.orchestrator as o, importlib.resources as r; print(o.__file__); "
            "print(r.files('cvstudy.studies') / 'resnet50.yaml')",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(fresh_site) for p in where), where
    assert Path(where[1]).is_file()

    sweep = subprocess.run(
        [
            env_dir / "bin" / "cvstudy",
            "sweep",
            "--model",
            "resnet50",
            "--trials",
            "1",
            "--epochs",
            "1",
            "--data",
            data,
            "--set",
            "model=test_resnet",
            "--set",
            "batch_size=16",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert f"({where[1]})" in sweep.stdout  # the shipped file, read from the installed package
    assert "1 complete" in sweep.stdout and (work / "mlflow.db").is_file() and (work / "optuna.db").is_file()

    # the Python API, from the installed package, reads what the command recorded
    code = (
        "import cvstudy; t = cvstudy.results('resnet50'); "
        "print(len(t), t.loc[0, 'state'], repr(float(t.loc[0, 'test_accuracy'])), t.loc[0, 'mlflow_run_id'])"
    )
    api = subprocess.run([python, "-c", code], cwd=work, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert api.returncode == 0, api.stderr
    rows, state, accuracy, run_id = api.stdout.split()
    logged = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_run(run_id).data.metrics["test/accuracy"]
    assert (rows, state, float(accuracy)) == ("1", "COMPLETE", logged)
