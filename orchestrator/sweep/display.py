"""The sweep's one live display: counts against the target, each worker's trial and epoch, the best
value and its parameters, and when the trials and the study should end at the current pace. On a
terminal it redraws in place; elsewhere (a file under SLURM, nohup or CI) it prints a line per trial's
epoch (at most one per worker every ``PROGRESS_SECONDS``, and always its first and last) and one per
finished trial, so a log shows a working sweep from a hung one."""

from __future__ import annotations

import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..tracking.schema import TrialAttr
from .trials import effective_params, format_params

PROGRESS_SECONDS = 30.0  # off a terminal: at most one progress line per worker this often (seconds)


def duration(seconds: float) -> str:
    """``42s``, ``3m10s``, ``2h05m``: a time span as a person reads it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Pace:
    """One run's epochs as they come: when it started, each epoch's seconds, and when a log line last
    said so (``PROGRESS_SECONDS`` apart at most, the first and last epoch always)."""

    started: float
    epoch_seconds: list[float] = field(default_factory=list)
    said_at: float | None = None

    def due(self, now: float, last_epoch: bool) -> bool:
        """Whether this epoch gets a line; if so, it is counted as said."""
        if self.said_at is None or now - self.said_at >= PROGRESS_SECONDS or last_epoch:
            self.said_at = now
            return True
        return False

    def eta(self, epochs_left: int) -> float | None:
        """Seconds to go at the epochs' mean pace (None before the first epoch)."""
        return statistics.fmean(self.epoch_seconds) * max(0, epochs_left) if self.epoch_seconds else None


def epoch_lines(
    console: Console, what: str, epochs: int, metric: str, clock: Callable[[], float] = time.monotonic
) -> Callable[[dict], bool]:
    """An ``on_epoch`` callback for one run outside the sweep's display (``confirm``'s seeds): a line per
    epoch when due (``Pace``), with the run's ETA. It never stops the run."""
    pace = Pace(clock())

    def on_epoch(row: dict) -> bool:
        epoch, now = row["epoch"] + 1, clock()
        pace.epoch_seconds.append(float(row.get("epoch_seconds") or 0.0))
        if pace.due(now, epoch == epochs):
            speed = f", {row['images_per_second']:.0f} img/s" if row.get("images_per_second") else ""
            console.print(
                f"{what} epoch {epoch}/{epochs}: {metric} {row[metric]:.4f}{speed}, {duration(now - pace.started)} "
                f"in; run ETA {duration(pace.eta(epochs - epoch) or 0.0)}",
                highlight=False,
                soft_wrap=True,
            )
        return False

    return on_epoch


class SweepDisplay:
    def __init__(
        self,
        console: Console,
        study: str,
        target: int,
        metrics: tuple[str, ...],
        workers: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.console, self.study, self.target = console, study, target
        self.metrics, self.objective = metrics, metrics[0]  # the objectives; the first is shown per epoch
        self.workers: dict[int, dict] = {i: {"state": "starting"} for i in range(workers)}
        self.counts = None
        self.best = None
        self.clock = clock
        self.trial_seconds: list[float] = []  # wall seconds of the trials this sweep saw from start to end
        self.live = Live(console=console, refresh_per_second=4, transient=False) if console.is_terminal else None

    def __enter__(self):
        if self.live:
            self.live.start()
            self.live.update(self.render())
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.update(self.render())
            self.live.stop()

    def set_counts(self, counts, best) -> None:
        self.counts, self.best = counts, best
        self._refresh()

    def event(self, e: dict) -> None:
        w = self.workers.setdefault(e["worker"], {})
        kind = e["kind"]
        if kind == "start":
            resumed = e.get("resumed_epoch", 0)
            w.update(
                state="training",
                trial=e["trial"],
                epoch=resumed,
                epochs=e["epochs"],
                value=None,
                params=e["params"],
                device=e["device"],
                resumed=resumed,
                pace=Pace(self.clock()),
            )
            if resumed and not self.live:
                self.console.print(
                    f"trial {e['trial']} resumes its interrupted run after epoch {resumed}", highlight=False
                )
        elif kind == "epoch":
            w.update(epoch=e["epoch"], value=e["value"], images_per_second=e.get("images_per_second"))
            if e.get("epoch_seconds") is not None:
                w["pace"].epoch_seconds.append(e["epoch_seconds"])
            if not self.live and w["pace"].due(self.clock(), e["epoch"] == w["epochs"]):
                self.console.print(self.progress_line(w), highlight=False, soft_wrap=True)  # one line, to grep
        elif kind == "end":
            if w.get("state") == "training" and not w.get("resumed"):
                self.trial_seconds.append(self.clock() - w["pace"].started)  # a whole trial, start to end
            w.update(state=f"trial {e['trial']} {e['state'].lower()}")
            if not self.live:
                value = "" if e["value"] is None else f" {self.objective}={e['value']:.4f}"
                c = self.counts
                tally = f" ({c.done}/{self.target} done)" if c else ""
                self.console.print(f"trial {e['trial']} {e['state']}{value}{tally}", highlight=False, soft_wrap=True)
            if e.get("error"):
                self.console.print(f"[red]trial {e['trial']} failed: {e['error']}[/]", highlight=False)
        elif kind == "worker_done":
            w.update(state="done")
        self._refresh()

    def trial_eta(self, w: dict) -> float | None:
        """Seconds until the worker's trial ends, at its epochs' mean pace (None before its first epoch)."""
        return w["pace"].eta(w["epochs"] - w["epoch"]) if w.get("state") == "training" else None

    def study_eta(self) -> float | None:
        """Seconds until the study reaches its target at the current pace: the trials not yet started, at
        the mean length of the trials this sweep saw end (else the running trials' epoch pace times
        their epochs), shared by the workers, after the running trials end. Pruning makes it an upper
        bound. None before any epoch."""
        training = [w for w in self.workers.values() if w.get("state") == "training"]
        etas = [self.trial_eta(w) for w in training]
        if not training or any(eta is None for eta in etas):
            return None
        if self.trial_seconds:
            per_trial = statistics.fmean(self.trial_seconds)
        else:
            per_trial = statistics.fmean(w["pace"].eta(w["epochs"]) for w in training)  # a whole trial each
        done = self.counts.done if self.counts is not None else 0
        waiting = max(0, self.target - done - len(training))
        return (sum(eta for eta in etas if eta is not None) + waiting * per_trial) / len(training)

    def progress_line(self, w: dict) -> str:
        """``trial 3 epoch 4/12: val_balanced_accuracy 0.6123, 412 img/s, 1m20s in; trial ETA 3m10s,
        study ETA ~41m00s``: one worker's trial, for a log."""
        said = [] if w.get("value") is None else [f"{self.objective} {w['value']:.4f}"]
        if w.get("images_per_second"):
            said.append(f"{w['images_per_second']:.0f} img/s")
        said.append(f"{duration(self.clock() - w['pace'].started)} in")
        trial_eta, study_eta = self.trial_eta(w), self.study_eta()
        return (
            f"trial {w['trial']} epoch {w['epoch']}/{w['epochs']}: {', '.join(said)}; "
            f"trial ETA {duration(trial_eta) if trial_eta is not None else '?'}, "
            f"study ETA {'~' + duration(study_eta) if study_eta is not None else '?'}"
        )

    def _refresh(self) -> None:
        if self.live:
            self.live.update(self.render())

    def render(self):
        c = self.counts
        head = Text(f"study {self.study}: ", style="bold")
        if c is not None:
            head.append(f"{c.done}/{self.target} trials  ")
            head.append(f"{c.complete} complete ", style="green")
            head.append(f"{c.pruned} pruned ", style="yellow")
            head.append(f"{c.failed} failed ", style="red")
            head.append(f"{c.running} running")
            eta = self.study_eta()
            if eta is not None:
                head.append(f"  ETA ~{duration(eta)} at this pace")
        if self.best is not None:
            head.append(
                f"\nbest {values_text(self.best, self.metrics)} (trial {self.best.number}): "
                f"{format_params(effective_params(self.best))}"
            )
        table = Table(show_header=True, header_style="bold", expand=False)
        for col in ("worker", "device", "trial", "epoch", self.objective, "params"):
            table.add_column(col)
        for i, w in sorted(self.workers.items()):
            if w.get("state") == "training":
                value = "" if w.get("value") is None else f"{w['value']:.4f}"
                table.add_row(
                    str(i),
                    w.get("device", ""),
                    str(w["trial"]),
                    f"{w['epoch']}/{w['epochs']}" + (f" (resumed at {w['resumed']})" if w.get("resumed") else ""),
                    value,
                    format_params(w.get("params", {}))[:80],
                )
            else:
                table.add_row(str(i), w.get("device", ""), "", "", "", w.get("state", ""))
        return Group(head, table)

    def summary(self, outcome) -> None:
        c = outcome.counts
        self.console.print(
            f"study {outcome.study_name}: added {outcome.added} trials; {c.done}/{self.target} done "
            f"({c.complete} complete, {c.pruned} pruned, {c.failed} failed"
            f"{f', {c.retried} retried' if c.retried else ''})",
            highlight=False,
        )
        if outcome.best is not None:
            b = outcome.best
            test = b.user_attrs.get(TrialAttr.test("balanced_accuracy"))
            std = b.user_attrs.get(TrialAttr.test_std("balanced_accuracy"))
            seeds = len(b.user_attrs.get(TrialAttr.SEEDS, [None]))
            spread = f" ± {std:.4f} over {seeds} seeds" if std is not None else ""
            self.console.print(
                f"best trial {b.number}: {values_text(b, self.metrics)}"
                f"{f', test balanced accuracy {test:.4f}{spread}' if test is not None else ''}; "
                f"{format_params(effective_params(b))}; MLflow run {b.user_attrs.get(TrialAttr.MLFLOW_RUN_ID, '?')}",
                highlight=False,
            )
            if seeds == 1:
                self.console.print(
                    f"one seed per trial: `cvstudy confirm {shlex.quote(outcome.study_name)} --top 3 --seeds 5` "
                    "retrains "
                    "the best with fresh seeds and says whether the winner's lead holds",
                    highlight=False,
                )


def values_text(trial, metrics: tuple[str, ...]) -> str:
    """``metric value`` for each of a complete trial's objectives, e.g. ``val_balanced_accuracy 0.8123``."""
    return ", ".join(f"{m} {v:.4f}" for m, v in zip(metrics, trial.values))
