"""The studies' results as the original study's paper printed them: one row per model x pretrained, with
Accuracy, Precision, Recall and F1 columns, written beside ``report.md`` as ``table.md``, ``table.csv``
and ``table.tex`` (booktabs).

Each row is the group's best trial on validation. Its figures are ``mean ± std`` over seeds when
``cvstudy confirm`` retrained that trial (or the trial itself trained several seeds), else the trial's one
run with its 95 % interval over the test images. F1 is scikit-learn's macro F1; the original study's "F1"
(the harmonic mean of macro precision and macro recall) has its own, labelled column, F1*.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..stats import interval_digits, mean_std, with_interval
from .data import StudyData, TrialRow

PAPER_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "harmonic_f1")
"""The table's figures: ``harmonic_f1`` is the original study's F1*, 2PR / (P + R) of macro P and R."""
HEADERS = ("Model", "Pretrained", "Accuracy", "Precision", "Recall", "F1 (macro)", "F1*", "Seeds", "Source")
NOTE = (
    "Each row: the best trial of its model x pretrained group, chosen on validation. mean ± std over seeds "
    "where seeds were trained (cvstudy confirm, or a study's repeats), else one run with its 95 % interval "
    "over the test images. F1: scikit-learn's macro F1. F1*: the original study's F1, the harmonic mean of "
    "macro precision and macro recall."
)


@dataclass(frozen=True)
class Figure:
    value: float
    std: float | None = None
    """Over ``seeds`` seeds, when there are several."""
    low: float | None = None
    high: float | None = None
    """The 95 % interval over the test images, for one run."""
    digits: int = 4
    """Decimals of a bare value (F1*, which has no interval of its own: its neighbour F1's)."""

    def text(self) -> str:
        if self.std is not None:
            return f"{self.value:.3f} ± {self.std:.3f}"
        if self.low is not None and self.high is not None:
            return with_interval(self.value, self.low, self.high)
        return f"{self.value:.{self.digits}f}"


@dataclass(frozen=True)
class PaperRow:
    model: str
    pretrained: str
    figures: dict[str, Figure]
    seeds: int
    source: str
    """Where the figures come from: ``confirm`` or ``study NAME, trial N``."""


def harmonic(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def paper_rows(studies: list[StudyData]) -> list[PaperRow]:
    rows = []
    for s in studies:
        best: dict[tuple[str, str], TrialRow] = {}
        for r in s.ranked:  # best first on validation
            best.setdefault((str(r.config.get("model", "?")), str(r.config.get("pretrained", "?"))), r)
        confirmed = {c.trial: c for c in s.confirmation.configs} if s.confirmation else {}
        for (model, pretrained), r in sorted(best.items()):
            c = confirmed.get(r.number)
            if c is not None and all(m in c.per_seed for m in ("accuracy", "macro_precision", "macro_recall")):
                rows.append(_from_seeds(model, pretrained, c.per_seed, f"{s.name} trial {r.number}, confirmed"))
            else:
                rows.append(_from_trial(model, pretrained, r, f"{s.name} trial {r.number}"))
    return rows


def _from_seeds(model: str, pretrained: str, per_seed: dict[str, dict[int, float]], source: str) -> PaperRow:
    seeds = sorted(set.intersection(*(set(per_seed[m]) for m in ("accuracy", "macro_precision", "macro_recall"))))
    values = {m: [per_seed[m][k] for k in seeds] for m in per_seed if set(seeds) <= set(per_seed[m])}
    values["harmonic_f1"] = [harmonic(p, r) for p, r in zip(values["macro_precision"], values["macro_recall"])]
    figures = {m: Figure(*mean_std(values[m])) for m in PAPER_METRICS if m in values}
    return PaperRow(model, pretrained, figures, len(seeds), source)


def _from_trial(model: str, pretrained: str, r: TrialRow, source: str) -> PaperRow:
    figures = {}
    for m in PAPER_METRICS[:-1]:
        if m not in r.test:
            continue
        if m in r.std:
            figures[m] = Figure(r.test[m], std=r.std[m])
        elif m in r.intervals:
            figures[m] = Figure(r.test[m], low=r.intervals[m][0], high=r.intervals[m][1])
        else:
            figures[m] = Figure(r.test[m])
    if "macro_precision" in r.test and "macro_recall" in r.test:  # of the means, with seeds: no interval of its own
        f1 = r.intervals.get("macro_f1")
        digits = interval_digits(*f1) if f1 and "macro_f1" not in r.std else 4
        figures["harmonic_f1"] = Figure(harmonic(r.test["macro_precision"], r.test["macro_recall"]), digits=digits)
    return PaperRow(model, pretrained, figures, r.seeds, source)


def cells(row: PaperRow) -> list[str]:
    return [
        row.model,
        row.pretrained,
        *(row.figures[m].text() if m in row.figures else "" for m in PAPER_METRICS),
        str(row.seeds),
        row.source,
    ]


def markdown(rows: list[PaperRow]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
LATEX_SPECIAL |= {"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex(rows: list[PaperRow]) -> str:
    """A booktabs tabular (``\\usepackage{booktabs}``): figures in math mode, names escaped."""

    def figure(cell: str) -> str:
        return "$" + cell.replace("±", r"\pm") + "$" if cell else ""

    head = " & ".join(latex_escape(h) for h in HEADERS) + r" \\"
    body = []
    for r in rows:
        c = cells(r)
        body.append(
            " & ".join([latex_escape(c[0]), latex_escape(c[1]), *(figure(x) for x in c[2:7]), c[7], latex_escape(c[8])])
            + r" \\"
        )
    return "\n".join(
        [
            "% " + NOTE,
            r"\begin{tabular}{ll" + "r" * 5 + "rl}",
            r"\toprule",
            head,
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            "",
        ]
    )


def write_table_csv(path: Path, rows: list[PaperRow]) -> None:
    """Full precision: each figure's value, and its std or interval endpoints where it has them."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "model",
                "pretrained",
                *(f"{m}{end}" for m in PAPER_METRICS for end in ("", "_std", "_ci_low", "_ci_high")),
            ]
            + ["seeds", "source"]
        )
        for r in rows:
            out = [r.model, r.pretrained]
            for m in PAPER_METRICS:
                f = r.figures.get(m)
                parts = (f.value, f.std, f.low, f.high) if f else (None, None, None, None)
                out += ["" if v is None else f"{v:.6f}" for v in parts]
            writer.writerow(out + [r.seeds, r.source])


def write_tables(out_dir: Path, studies: list[StudyData]) -> dict[str, Path]:
    rows = paper_rows(studies)
    paths = {"table_md": out_dir / "table.md", "table_csv": out_dir / "table.csv", "table_tex": out_dir / "table.tex"}
    paths["table_md"].write_text(markdown(rows))
    write_table_csv(paths["table_csv"], rows)
    paths["table_tex"].write_text(latex(rows))
    return paths
