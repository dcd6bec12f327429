"""A full disk under a sweep, injected at each write site of a trial (its resume state, its logged model):
the write leaves half a file and fails with ENOSPC, as a full file system does. The sweep ends in one line
naming the path and its free space (exit 3); the half file is gone; the trial is re-queued and its run
ended INTERRUPTED (the environment stopped it, not its configuration), the study's run KILLED, nothing
RUNNING; and a rerun, with space again, resumes the same run and completes the study."""

from __future__ import annotations

import errno
from pathlib import Path

import optuna
import pytest
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from safetensors import safe_open

from cvstudy.orchestrator.report import writer
from tests.conftest import mlflow_runs, run_cli
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # sweeps through the command line


def _fill_the_disk_at(monkeypatch, name: str, after: int) -> list[Path]:
    """Make the artifact write of a file called ``name`` that comes after ``after`` others leave half the
    file and raise ENOSPC."""
    cut: list[Path] = []
    seen: list[Path] = []
    log_artifact, log_artifacts = LocalArtifactRepository.log_artifact, LocalArtifactRepository.log_artifacts

    def half_then_full(repo, written: list[Path]) -> None:
        for path in written:
            if path.name != name or path in seen:
                continue
            seen.append(path)
            if len(seen) > after and not cut:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                cut.append(path)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def one(repo, local_file, artifact_path=None):
        log_artifact(repo, local_file, artifact_path)
        half_then_full(repo, [Path(repo._get_destination_artifact_path(local_file, artifact_path)[1])])

    def tree(repo, local_dir, artifact_path=None):
        log_artifacts(repo, local_dir, artifact_path)
        half_then_full(repo, list(Path(repo._get_or_create_artifact_dir(artifact_path)).rglob(name)))

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", one)
    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", tree)
    return cut


def _whole(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return all(fh.get_tensor(k) is not None for k in fh.keys())
    except Exception:  # noqa: BLE001 -- cut short: not a safetensors file any more
        return False


# the second epoch's state (the first is written: the retry resumes from it); the model, after the last epoch
@pytest.mark.parametrize(("site", "after"), [("state.safetensors", 1), ("model.safetensors", 0)])
def test_a_full_disk_interrupts_the_trial_and_a_rerun_resumes_it(tmp_path, tiny_data, monkeypatch, site, after):
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", 2)
    path.write_text(path.read_text() + "state_min_seconds: 0\n")  # a state every epoch
    monkeypatch.chdir(tmp_path)
    cut = _fill_the_disk_at(monkeypatch, site, after)
    args = ["sweep", "--study-file", str(path), "--trials", "1"]

    full = run_cli(args, tmp_path)
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    assert full.returncode == 3 and len(lines) == 1, full.stdout + full.stderr
    (half,) = cut
    assert f"{half}: no space left on the device (" in lines[0] and " MiB free on " in lines[0]
    assert not half.exists()  # the half-written file is removed
    assert all(_whole(p) for p in (tmp_path / "mlruns").rglob("*.safetensors"))  # what remains is whole
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]  # re-queued, not a failed configuration
    runs = {r.data.tags.get("cvstudy.role"): r for r in mlflow_runs(tmp_path, "tiny")}
    assert runs["trial"].info.status == "KILLED" and runs["trial"].data.tags["cvstudy.trial_state"] == "INTERRUPTED"
    assert (
        runs["trial"].data.tags["cvstudy.error"].startswith("interrupted: ")
        and site in runs["trial"].data.tags["cvstudy.error"]
    )
    assert runs["study"].info.status == "KILLED"

    monkeypatch.undo()  # space again
    monkeypatch.chdir(tmp_path)
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    (trial_run,) = [r for r in mlflow_runs(tmp_path, "tiny") if r.data.tags.get("cvstudy.role") == "trial"]
    assert trial_run.info.run_id == runs["trial"].info.run_id and trial_run.info.status == "FINISHED"
    assert not [r for r in mlflow_runs(tmp_path) if r.info.status == "RUNNING"]

    if site == "model.safetensors":  # the report, onto a disk that fills while its table is written

        def half_then_full(path, rows):
            path.write_text("study,trial\n")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(writer, "write_trials_csv", half_then_full)
        report = run_cli(["report", "tiny"], tmp_path)
        lines = [line for line in report.stderr.splitlines() if line.strip()]
        assert report.returncode == 3 and len(lines) == 1, report.stdout + report.stderr
        assert "trials.csv: no space left on the device (" in lines[0]
        assert list((tmp_path / "reports").iterdir()) == []  # neither the report's folder nor a partial one
