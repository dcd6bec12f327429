"""The sweep's one live display: counts against the target, each worker's trial and epoch, the best
value and its parameters. On a terminal it redraws in place; elsewhere (CI, logs) it prints one line
per finished trial."""

from __future__ import annotations

import shlex

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..tracking.schema import TrialAttr
from .trials import effective_params


def format_params(params: dict) -> str:
    """``lr=0.00366, aug=basic``: three significant digits, so a learning rate of 3e-4 is not "0.000"."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class SweepDisplay:
    def __init__(self, console: Console, study: str, target: int, metrics: tuple[str, ...], workers: int):
        self.console, self.study, self.target = console, study, target
        self.metrics, self.objective = metrics, metrics[0]  # the objectives; the first is shown per epoch
        self.workers: dict[int, dict] = {i: {"state": "starting"} for i in range(workers)}
        self.counts = None
        self.best = None
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
            )
            if resumed and not self.live:
                self.console.print(
                    f"trial {e['trial']} resumes its interrupted run after epoch {resumed}", highlight=False
                )
        elif kind == "epoch":
            w.update(epoch=e["epoch"], value=e["value"])
        elif kind == "end":
            w.update(state=f"trial {e['trial']} {e['state'].lower()}")
            if not self.live:
                value = "" if e["value"] is None else f" {self.objective}={e['value']:.4f}"
                c = self.counts
                tally = f" ({c.done}/{self.target} done)" if c else ""
                self.console.print(f"trial {e['trial']} {e['state']}{value}{tally}", highlight=False)
            if e.get("error"):
                self.console.print(f"[red]trial {e['trial']} failed: {e['error']}[/]", highlight=False)
        elif kind == "worker_done":
            w.update(state="done")
        self._refresh()

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
