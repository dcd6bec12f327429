"""``cvstudy compare A B``: two models scored on the same test images, image by image.

Two accuracies of 0.68 and 0.70 on the same 1,000 images are not two independent draws: most images
both get right or both get wrong, and only the images where they disagree say which is better. So
accuracy is compared with McNemar's exact test on those discordant images, and balanced accuracy,
macro precision, recall and F1 by a paired bootstrap of the difference (both models scored on the same
resampled images, within each class). Each side is read from its run's saved test predictions
(``test_predictions.json``), so no model is loaded and no data directory is needed; two runs tested on
different images are refused.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.table import Table

from cvstudy.trainers.intervals import LEVEL
from cvstudy.trainers.metrics import SCALARS

from ..errors import CompareError
from ..stats import ALPHA, with_interval
from ..sweep.storage import default_storage, find_study, open_storage
from ..sweep.trials import checkpoint_run_id, ranked_complete
from ..tracking.client import Tracker
from ..tracking.predictions import Comparison, load_side, paired_over_images
from .predict import best_run_id, registered_run_id

RUN_ID = re.compile(r"[0-9a-f]{32}")
TRIAL = re.compile(r"(?P<study>.+)#(?P<number>\d+)")


def resolve(ref: str, tracker: Tracker, storage_url: str | None) -> str:
    """The MLflow run behind a run id, ``STUDY@best``, ``STUDY#N`` (trial N) or ``models:/...``."""
    if ref.startswith("models:/"):
        return registered_run_id(ref, tracker)
    if ref.endswith("@best"):
        return best_run_id(ref.removesuffix("@best"), storage_url, tracker)
    if found := TRIAL.fullmatch(ref):
        study = find_study(open_storage(storage_url or default_storage(tracker.uri)), found["study"])
        if study is None:
            raise CompareError(f"{ref}: no study named {found['study']!r} in the storage")
        number = int(found["number"])
        trial = next((t for t in ranked_complete(study) if t.number == number), None)
        if trial is None:
            raise CompareError(f"{ref}: study {found['study']!r} has no complete trial {number}")
        run_id = checkpoint_run_id(trial)
        if run_id is None:
            raise CompareError(f"{ref}: trial {number} of {found['study']!r} names no MLflow run")
        return run_id
    if RUN_ID.fullmatch(ref):
        return ref
    raise CompareError(f"{ref!r}: expected a run id (32 hex digits), STUDY@best, STUDY#N or models:/NAME/VERSION")


def compare(
    ref_a: str,
    ref_b: str,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
) -> Comparison:
    console = console or Console()
    tracker = Tracker(tracking_uri)
    sides = [load_side(tracker.client, resolve(ref, tracker, storage_url), ref) for ref in (ref_a, ref_b)]
    result = paired_over_images(*sides)
    console.print(comparison_table(result))
    for line in _result_lines(result):
        console.print(line, highlight=False)
    return result


def comparison_table(c: Comparison) -> Table:
    table = Table(
        title=f"A = {c.a.ref} vs B = {c.b.ref}: the same {len(c.a.labels)} test images",
        caption=f"A - B: {LEVEL:.0%} interval of a paired bootstrap over the test images, within each class",
    )
    for column in ("metric", "A", "B", "A - B"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for m in SCALARS:
        difference, low, high = c.differences[m]
        table.add_row(
            m.replace("_", " "), f"{c.values[m][0]:.4f}", f"{c.values[m][1]:.4f}", with_interval(difference, low, high)
        )
    return table


def _result_lines(c: Comparison) -> list[str]:
    verdict = "different" if c.mcnemar_p < ALPHA else "not told apart"
    return [
        f"images only A got right: {c.only_a}; only B: {c.only_b}; both or neither: "
        f"{len(c.a.labels) - c.only_a - c.only_b}",
        f"accuracy: McNemar's exact test on the {c.only_a + c.only_b} images they disagree on, p = "
        f"{c.mcnemar_p:.3g} ({verdict} at {ALPHA}); one test set and one seed each: seeds are `cvstudy confirm`'s job",
        f"runs: A {c.a.run_id}, B {c.b.run_id}",
    ]
