"""A long-lived worker's memory stays flat from trial to trial (bench/scale.py, axis 4, measures 50)."""

import optuna
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # a command-line sweep (make test-fast skips it)

WARM = 3  # trials before the worker's memory settles: imports, the allocator's pools, the first checkpoint
TOLERANCE_MIB = 150  # below one ResNet-18 trial left behind (weights, gradients, AdamW moments: ~180 MiB)
STUDY = """
name: worker
pruner: none
fixed: {{model: resnet18, epochs: 1, batch_size: 16, data: {data}, optimizer: adamw}}
space:
  lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
"""


def test_one_workers_memory_after_each_trial_stays_within_a_trial_of_its_first_few(tmp_path, tiny_data):
    path = tmp_path / "worker.yaml"
    path.write_text(STUDY.format(data=tiny_data))
    proc = run_cli(["sweep", "--study-file", path, "--trials", "8", "--devices", "cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="worker", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8 and len({t.user_attrs["pid"] for t in trials}) == 1
    resident = [t.user_attrs["worker_memory_mib"]["host_resident"] for t in trials]
    assert all(r > 100 for r in resident), resident  # a process with torch loaded, in MiB (not KiB or pages)
    assert max(resident[WARM:]) <= max(resident[:WARM]) + TOLERANCE_MIB, resident
