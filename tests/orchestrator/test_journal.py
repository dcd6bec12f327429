"""A journal storage that survives a cut-off write: a record cut short at the end is set aside and the
study reads and grows again, at every byte a write can stop; a damaged record elsewhere stops with one
line naming the file, the byte and the repair, which keeps a backup."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from cvstudy.orchestrator.errors import StoreError
from cvstudy.orchestrator.sweep.journal import repair, scan
from cvstudy.orchestrator.sweep.storage import open_storage
from tests.conftest import run_cli


def _journal_with_trials(path) -> list[bytes]:
    """A study of three trials (two complete, the last one's completion written last); its lines."""
    storage = open_storage(f"journal:///{path}")
    study = optuna.create_study(study_name="j", storage=storage, direction="maximize")
    for value in (0.5, 0.7):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        study.tell(trial, value)
    last = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    study.tell(last, 0.9)
    return path.read_bytes().splitlines(keepends=True)


def _states(path) -> list[TrialState]:
    study = optuna.load_study(study_name="j", storage=open_storage(f"journal:///{path}"))
    return [t.state for t in study.trials]


def test_a_record_cut_at_any_byte_is_set_aside_and_the_study_reads_and_grows_again(tmp_path):
    whole = tmp_path / "whole.journal"
    lines = _journal_with_trials(whole)
    body, last = b"".join(lines[:-1]), lines[-1]
    assert _states(whole) == [TrialState.COMPLETE] * 3
    journal = tmp_path / "cut.journal"
    for cut in range(1, len(last)):  # every byte a write of the last record can stop after
        for old in tmp_path.glob("cut.journal.*"):
            old.unlink()
        journal.write_bytes(body + last[:cut])
        storage = open_storage(f"journal:///{journal}")  # sets the cut record aside, under the lock
        (side,) = tmp_path.glob("cut.journal.cut-*")
        assert side.read_bytes() == last[:cut] and journal.read_bytes() == body, cut
        study = optuna.load_study(study_name="j", storage=storage)
        # exact counts: the third trial lost only its completion, so it is RUNNING, to be recovered as any
        # interrupted trial is
        assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
        study.tell(study.trials[2].number, state=TrialState.FAIL)  # what recovery does with it
        study.enqueue_trial({"lr": 0.01})
        trial = study.ask()
        study.tell(trial, 0.8)
        # the file is whole again: Optuna's own reader, without cvstudy's wrapper, reads every record
        plain = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(journal))))
        assert [t.state for t in plain.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
        assert scan(journal) == []


@pytest.mark.parametrize("damage", ["garbage line", "binary"])
def test_a_damaged_record_stops_with_the_file_the_byte_and_the_repair(tmp_path, damage):
    journal = tmp_path / "optuna.journal"
    lines = _journal_with_trials(journal)
    if damage == "garbage line":
        bad_at = len(b"".join(lines[:2]))
        journal.write_bytes(b"".join(lines[:2]) + b"{not json\n" + b"".join(lines[2:]))
    else:
        bad_at = 0
        journal.write_bytes(bytes(range(256)) * 4 + b"\n" + b"".join(lines))
    with pytest.raises(StoreError) as err:
        optuna.load_study(study_name="j", storage=open_storage(f"journal:///{journal}"))
    message = str(err.value)
    assert str(journal) in message and f"at byte {bad_at}" in message and "cvstudy storage repair" in message
    assert "\n" not in message

    backup, found = repair(journal)
    assert found[0].offset == bad_at and backup is not None  # (binary bytes hold line ends of their own)
    assert backup.read_bytes() != journal.read_bytes() and len(backup.read_bytes()) > len(journal.read_bytes())
    assert _states(journal) == [TrialState.COMPLETE] * 3  # every trial back
    assert len(list(tmp_path.glob("optuna.journal.damaged-*"))) == 1


def test_the_command_line_names_the_damage_and_repairs_it(tmp_path):
    journal = tmp_path / "optuna.journal"
    lines = _journal_with_trials(journal)
    journal.write_bytes(b"".join(lines[:2]) + b"\x00\x01garbage\n" + b"".join(lines[2:]))

    report = run_cli(["report", "j", "--storage", f"journal:///{journal}"], tmp_path)
    assert report.returncode == 3, report.stdout + report.stderr  # the store, not the input
    (line,) = [x for x in report.stderr.splitlines() if x.strip()]
    assert str(journal) in line and "cvstudy storage repair" in line and "Traceback" not in report.stderr

    check = run_cli(["storage", "check", journal], tmp_path)
    assert check.returncode == 1 and f"byte {len(b''.join(lines[:2]))}" in check.stdout
    fixed = run_cli(["storage", "repair", journal], tmp_path)
    assert fixed.returncode == 0 and "set aside 1 damaged record" in fixed.stdout
    assert run_cli(["storage", "check", journal], tmp_path).returncode == 0
    assert _states(journal) == [TrialState.COMPLETE] * 3
