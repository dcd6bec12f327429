"""The report's tables: HTML and Markdown rendering, the leaderboard and grouped rows, the data labels
and warnings for runs on different data digests, the single-seed line, and the confirmation's tables."""

from __future__ import annotations

import html
import shlex

from cvstudy.trainers.metrics import SCALARS

from ..stats import ALPHA, holm, with_interval
from ..tracking import digests
from .data import PUBLISHED, StudyData, TrialRow, fmt, group_key, grouped


def html_table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def data_labels(rows: list[TrialRow]) -> dict[tuple, str]:
    """``{digests: "A"}`` for each distinct (train, val, test) data among ``rows``; empty when all agree."""
    return digests.labels(r.data for r in rows)


def data_warning(labels: dict[tuple, str]) -> str:
    parts = "; ".join(f"{label} = train {d[0]}, val {d[1]}, test {d[2]}" for d, label in labels.items())
    return (
        f"These runs trained or were tested on {len(labels)} different datasets (column 'data'; digests differ): "
        f"their numbers are not directly comparable. {parts}"
    )


def single_seed_line(s: StudyData) -> str:
    line = (
        f"Single-seed ranking: each trial of {s.name} trained one seed, and seeds alone move test metrics by "
        "several points on small data; read gaps smaller than that as ties."
    )
    if s.confirmation is None:
        return (
            line + f" `cvstudy confirm {shlex.quote(s.name)} --top 3 --seeds 5` retrains the best with fresh seeds; "
            "a study's `repeats: K` averages K seeds per trial."
        )
    return line + " The confirmation below retrains its best with fresh seeds."


def interval_line(rows: list[TrialRow]) -> str | None:
    """What the brackets beside single-seed test metrics are, and which trials have none."""
    single = [r for r in rows if r.seeds == 1 and r.test]
    if not single:
        return None
    line = (
        "Brackets: the 95 % interval of a test metric over the test images (Wilson's for accuracy, a "
        "bootstrap within each class for the others); each number is rounded to what its interval supports."
    )
    missing = [str(r.number) for r in single if not r.intervals]
    if missing:
        line += (
            f" {len(missing)} of {len(single)} trials were logged before cvstudy recorded these intervals and "
            f"show none (trial{'s' if len(missing) > 1 else ''} {', '.join(missing[:10])}"
            f"{', ...' if len(missing) > 10 else ''})."
        )
    return line


def summary_table(summary):
    """The confirmation's per-configuration table for a terminal: the report's own cells
    (``confirmation_rows``), so the terminal and the report never disagree."""
    from rich.table import Table

    columns, rows, _, _ = confirmation_rows(summary)
    table = Table(
        title=f"confirmation of {summary.study}: test metrics, fresh seeds",
        caption="mean ± std over seeds; 95 % interval: t interval of the mean",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("configuration", "params", "data") else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def confirmation_rows(summary) -> tuple[list[str], list[list], list[str], list[list]]:
    """The confirmation's per-configuration table and its paired comparisons."""
    columns = [
        "configuration",
        "params",
        "seeds",
        "test bal-acc (mean ± std)",
        "95 % interval",
        "test acc",
        "test macro F1",
    ]
    label = summary.data_labels()
    if summary.mixed_data:
        columns.append("data")
    rows = []
    for c in summary.configs:
        b = c.interval("balanced_accuracy")
        if b is None:
            continue  # no seed of it finished
        rows.append(
            [
                c.label,
                c.params,
                b.n,
                f"{b.mean:.4f} ± {b.std:.4f}",
                f"[{b.low:.4f}, {b.high:.4f}]",
                *(f"{iv.mean:.4f} ± {iv.std:.4f}" if (iv := c.interval(m)) else "" for m in ("accuracy", "macro_f1")),
            ]
            + ([", ".join(sorted(label[d] for d in c.data_digests))] if summary.mixed_data else [])
        )
    pair_columns = [
        "comparison",
        "paired seeds",
        "difference in test bal-acc",
        "95 % interval",
        "test",
        "p-value",
        "Holm-adjusted p",
        f"at {ALPHA}, family-wise",
    ]
    pairs = [
        [
            f"{p.a} vs {p.b}",
            p.seeds,
            f"{p.difference.mean:+.4f}",
            f"[{p.difference.low:+.4f}, {p.difference.high:+.4f}]",
            p.test,
            f"{p.p_value:.3g}",
            f"{p.p_adjusted:.3g}" if p.p_adjusted is not None else "",
            "significant" if p.significant else "not significant",
        ]
        for p in summary.comparisons
    ]
    return columns, rows, pair_columns, pairs


LEADER_COLUMNS = (
    "study",
    "trial",
    "state",
    "params",
    "seeds",
    "objective",
    "test acc",
    "test bal-acc",
    "macro P",
    "macro R",
    "macro F1",
    "epochs",
    "seconds",
    "MLflow run",
)


def leader_cells(r: TrialRow, labels: dict | None = None) -> list[str]:
    cells = [
        r.study,
        str(r.number),
        r.state,
        r.params_text,
        str(r.seeds),
        r.cell("objective"),
        *(r.cell(k) for k in SCALARS),
        fmt(r.epochs),
        fmt(r.seconds, 1),
        r.run_id or "",
    ]
    return cells + [labels.get(r.data, "?")] if labels else cells


def group_rows(data: StudyData) -> tuple[list[str], list[list[str]]]:
    columns = [
        "model",
        "pretrained",
        "augmentation",
        "trial",
        "seeds",
        "Accuracy",
        "Precision",
        "Recall",
        "F1 (macro)",
        "balanced acc",
    ]
    # beside the published table only when the study recorded that it reproduces it (its file's
    # ``reproduces``), and only for the models that table has
    table = PUBLISHED.get(data.reproduces, {})
    show_published = any((m, str(p).lower() == "true") in table for (m, p, _), _ in grouped(data))
    if show_published:
        columns += ["published Acc", "published P", "published R", "published F1*"]
    versus = [c for c in data.versus_best.values() if c is not None]
    adjusted = dict(zip((id(c) for c in versus), holm([c.mcnemar_p for c in versus])))
    if versus:
        columns += ["bal-acc - best's", "McNemar p", "McNemar p (Holm)"]
    confirmed = {c.trial: c for c in data.confirmation.configs} if data.confirmation else {}
    if confirmed:
        columns += ["confirmed trial", "confirmed Accuracy", "confirmed F1 (macro)", "confirmed balanced acc"]
    by_number = {r.number: r for r in data.ranked}
    rows = []
    for (model, pretrained, aug), r in grouped(data):
        row = [
            model,
            pretrained,
            aug,
            r.number,
            r.seeds,
            *(r.cell(k) for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "balanced_accuracy")),
        ]
        if versus:
            versus_cell = data.versus_best.get(r.number)
            if r.number == data.ranked[0].number:
                row += ["(the study's best)", "", ""]
            elif versus_cell is None:
                row += ["no saved predictions", "", ""]
            else:  # the group's trial is B: its difference from the best is B - A
                difference, low, high = versus_cell.differences["balanced_accuracy"]
                p_values = f"{versus_cell.mcnemar_p:.3g}", f"{adjusted[id(versus_cell)]:.3g}"
                row += [with_interval(-difference, -high, -low), *p_values]
        if confirmed:
            # the group's best confirmed configuration (by the study's validation ranking)
            c = next(
                (
                    confirmed[n]
                    for n in (x.number for x in data.ranked)
                    if n in confirmed and group_key(by_number[n]) == (model, pretrained, aug)
                ),
                None,
            )
            row += [c.trial if c else ""] + [
                (iv.text(4) if (iv := c.interval(m)) else "") if c else ""
                for m in ("accuracy", "macro_f1", "balanced_accuracy")
            ]
        if show_published:
            pub = table.get((model, str(pretrained).lower() == "true"))
            row += [f"{v:.4f}" for v in pub] if pub else ["", "", "", ""]
        rows.append(row)
    return columns, rows
