"""Property-based: study files and --set values of wrong types, huge, negative, NaN and infinite numbers,
wrong shapes and odd strings end in a study (or a configuration) or in one user-facing error, never
anything else (the command line turns that error into one line and exit 2, tested in test_boundaries)."""

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvstudy.orchestrator.sweep.study import TOP_KEYS, load_study_spec
from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.errors import CvstudyError
from tests.conftest import run_cli

SETTINGS = sorted(TrainConfig.keys())
odd_numbers = st.sampled_from(
    [0, -1, -5, 1, 2, 2**31, 2**64, 10**400 // 10**380, 1e400, -1e400, math.nan, 1e-320, 0.5, True, False]
)
odd_strings = st.sampled_from(
    ["", "x", "none", "null", "inf", "nan", "-3", "1e400", "a\nb", "$(id)", "../..", "é", "resnet50", "cpu", "cuda:9"]
)
scalars = st.one_of(odd_numbers, odd_strings, st.none(), st.integers(-10, 10**12), st.floats(allow_nan=True))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["low", "high", "log", "step", "when", "set", "lr"]), inner, max_size=3),
    ),
    max_leaves=6,
)
study_files = st.dictionaries(st.sampled_from(sorted(TOP_KEYS)), values, max_size=5)
configs = st.dictionaries(st.sampled_from(SETTINGS), values, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=study_files)
def test_any_study_file_is_a_study_or_one_clear_error(tmp_path, raw):
    path = tmp_path / "study.yaml"
    try:
        path.write_text(yaml.safe_dump(raw))
    except (yaml.YAMLError, ValueError):
        return  # not representable as YAML: no user can write it
    try:
        load_study_spec(path)
    except CvstudyError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err).strip()


@settings(max_examples=300, deadline=None)
@given(flat=configs)
def test_any_set_value_is_a_configuration_or_one_clear_error(flat):
    try:
        TrainConfig.from_flat(flat)
    except CvstudyError as err:
        assert str(err).strip() and len(str(err).strip().splitlines()) == 1, str(err)


BASE = {"name": "prop", "trials": 1, "pruner": "none", "sampler": "random"}


merged_keys = st.dictionaries(
    st.sampled_from(["space", "overrides", "seed", "repeats", "name", "trials"]), values, max_size=2
)


# A few examples only: each is a process start (~5 s); the in-process tests above cover the inputs widely.
@pytest.mark.slow
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=merged_keys)
def test_the_command_line_ends_in_exit_0_or_one_line_and_exit_2(tiny_data, raw):
    """The same through ``cvstudy sweep`` in a subprocess: a tiny study with the generated keys merged in
    ends in exit 0, or in exit 2 with one line, no traceback and nothing created in its directory."""
    fixed = {"model": "test_resnet", "epochs": 1, "batch_size": 8, "data": str(tiny_data), "val_fraction": 0.25}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        path = cwd / "study.yaml"
        try:
            path.write_text(yaml.safe_dump({**BASE, "fixed": fixed, **raw}))
        except (yaml.YAMLError, ValueError):
            return
        proc = run_cli(["sweep", "--study-file", path, "--trials", "1", "--offline"], cwd=cwd)
        assert proc.returncode in (0, 2), proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        if proc.returncode == 2:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert [p.name for p in cwd.iterdir()] == ["study.yaml"]
