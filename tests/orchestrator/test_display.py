"""The sweep's progress off a terminal (a SLURM log, nohup, CI): a line per trial's epoch, at most one per
worker every 30 s (always the first and the last), with the trial's and the study's ETA, worked by hand."""

import io
from types import SimpleNamespace

from rich.console import Console

from cvstudy.orchestrator.sweep.display import SweepDisplay, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0, 42.4, 60, 190, 3599, 3600, 7500)] == [
        "0s",
        "42s",
        "1m00s",
        "3m10s",
        "59m59s",
        "1h00m",
        "2h05m",
    ]


def test_a_log_gets_rate_limited_epoch_lines_with_the_trials_and_the_studys_eta():
    out, clock = io.StringIO(), Clock()
    # 80 columns, a log's width when nothing says otherwise: each line stays whole, for grep
    display = SweepDisplay(Console(file=out, width=80), "s", 4, ("val_balanced_accuracy",), workers=2, clock=clock)
    display.set_counts(SimpleNamespace(done=0), None)
    for worker, trial in ((0, 0), (1, 1)):
        display.event({"kind": "start", "worker": worker, "trial": trial, "epochs": 4, "params": {}, "device": "cpu"})

    def epoch(at, worker, n, seconds, value=0.5):
        clock.now = at
        display.event(
            {
                "kind": "epoch",
                "worker": worker,
                "epoch": n,
                "value": value,
                "epoch_seconds": seconds,
                "images_per_second": 400.0,
            }
        )

    epoch(10, 0, 1, 10)  # worker 0's first line; worker 1 has no epoch yet: no study ETA
    epoch(12, 1, 1, 12)  # ETAs 3 x 10 = 30 s and 3 x 12 = 36 s; 2 trials waiting, 44 s each at this pace:
    #                      (30 + 36 + 2 x 44) / 2 workers = 77 s
    epoch(20, 0, 2, 10)  # 10 s after worker 0's last line: not said
    epoch(45, 0, 3, 25)  # 35 s after: said; mean epoch 15 s, 1 left: 15 s; worker 1: 36 s; per trial
    #                      (15 x 4 + 12 x 4) / 2 = 54 s; (15 + 36 + 2 x 54) / 2 = 79.5 s
    epoch(50, 0, 4, 5)  # the trial's last epoch: always said; mean 12.5 s, none left
    lines = out.getvalue().splitlines()
    assert lines == [
        "trial 0 epoch 1/4: val_balanced_accuracy 0.5000, 400 img/s, 10s in; trial ETA 30s, study ETA ?",
        "trial 1 epoch 1/4: val_balanced_accuracy 0.5000, 400 img/s, 12s in; trial ETA 36s, study ETA ~1m17s",
        "trial 0 epoch 3/4: val_balanced_accuracy 0.5000, 400 img/s, 45s in; trial ETA 15s, study ETA ~1m20s",
        # 0 + 36 + 2 x (12.5 x 4 + 12 x 4) / 2 = 134 s over 2 workers: 67 s
        "trial 0 epoch 4/4: val_balanced_accuracy 0.5000, 400 img/s, 50s in; trial ETA 0s, study ETA ~1m07s",
    ]
    # once a trial has ended, the study's pace is the trials' own length: 60 s
    clock.now = 60
    display.event({"kind": "end", "worker": 0, "trial": 0, "state": "COMPLETE", "value": 0.5})
    display.set_counts(SimpleNamespace(done=1, complete=1, pruned=0, failed=0, running=1, retried=0), None)
    assert display.study_eta() == (36 + 2 * 60) / 1  # worker 1 alone: its 36 s, then the 2 waiting trials


def test_a_confirmation_run_says_its_epochs_at_most_every_30_s_and_always_the_first_and_last():
    from cvstudy.orchestrator.sweep.display import epoch_lines

    out, clock = io.StringIO(), Clock()
    on_epoch = epoch_lines(Console(file=out, width=80), "[2/6] trial-004 seed 1001", 4, "val_macro_f1", clock=clock)
    for at, epoch, seconds in ((20, 0, 20), (40, 1, 20), (55, 2, 15), (60, 3, 5)):
        clock.now = at
        assert on_epoch({"epoch": epoch, "val_macro_f1": 0.25 * epoch, "epoch_seconds": seconds}) is False
    assert out.getvalue().splitlines() == [
        "[2/6] trial-004 seed 1001 epoch 1/4: val_macro_f1 0.0000, 20s in; run ETA 1m00s",  # 3 x 20 s
        # epoch 2 came 20 s after the last line: not said
        "[2/6] trial-004 seed 1001 epoch 3/4: val_macro_f1 0.5000, 55s in; run ETA 18s",  # mean 18.3 s, 1 left
        "[2/6] trial-004 seed 1001 epoch 4/4: val_macro_f1 0.7500, 1m00s in; run ETA 0s",
    ]
