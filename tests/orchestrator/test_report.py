"""Report formatting that a reader relies on."""

import pytest

from cvstudy.orchestrator.report.data import TrialRow
from cvstudy.orchestrator.sweep.trials import format_params


def test_parameters_keep_three_significant_digits():
    """A learning rate of 3.16e-4 must not print as 0.000 (it did, with fixed decimals)."""
    row = TrialRow(
        study="s",
        number=3,
        state="COMPLETE",
        value=0.5,
        run_id=None,
        params={"lr": 0.000316227, "weight_decay": 0.0172, "aug": "original", "mixup": 0.0, "epochs": 12},
    )
    assert format_params(row.params) == "lr=0.000316, weight_decay=0.0172, aug=original, mixup=0, epochs=12"


def _optuna_history_axes(n_trials: int = 3):
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n_trials)
    return ovm.plot_optimization_history(study)


def test_a_confusion_matrix_drawn_after_an_optuna_plot_keeps_cvstudys_style():
    """Optuna's matplotlib plots switch the process to ggplot: grey axes and white grid lines that crossed
    every cell and count of the report's confusion matrix. Drawn after one, the matrix has a white
    background and no grid, and the process's style is as it was."""
    import matplotlib as mpl

    from cvstudy.orchestrator.tracking.figures import confusion_figure, plt, styled

    before = dict(mpl.rcParams)
    with styled():
        plt.close(_optuna_history_axes().figure)
    assert {k: v for k, v in mpl.rcParams.items() if before.get(k) != v} == {}  # the switch undone
    with mpl.rc_context():  # restored for the other tests
        plt.close(_optuna_history_axes().figure)  # drawn bare: ggplot is now the process's style
        assert mpl.rcParams["axes.facecolor"] != "white"  # the premise
        fig = confusion_figure([[5, 1], [2, 7]], ["a", "b"])
        (ax,) = fig.axes
        assert mpl.colors.to_rgba(ax.get_facecolor()) == (1.0, 1.0, 1.0, 1.0)
        assert not any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())
        plt.close(fig)


def test_the_history_plot_has_whole_trial_numbers_and_its_legend_beside_the_data():
    from cvstudy.orchestrator.tracking.figures import plt, restyle, styled

    with styled():
        ax = _optuna_history_axes(3)
        restyle(ax, integer_x=True)
        ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # to the right of the axes, over no data
    plt.close(ax.figure)


@pytest.mark.slow
def test_a_figure_that_cannot_be_drawn_says_why(tmp_path, tiny_data, monkeypatch):
    """One complete trial: the history and the confusion matrix are drawn; importances and parallel
    coordinates cannot be, and the report says so instead of leaving them out."""
    from cvstudy.orchestrator.commands.report import report
    from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
    from cvstudy.orchestrator.sweep.study import load_study_spec
    from tests.orchestrator.test_sweep import study_file

    monkeypatch.chdir(tmp_path)
    spec = load_study_spec(study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", sampler="grid", pruner="none", epochs=1))
    sweep(spec, SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=1))
    result = report(["tiny"], out=str(tmp_path / "reports"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    md = result.paths["md"].read_text()
    for caption in ("parameter importances (Optuna, fANOVA)", "parallel coordinates"):
        assert f"tiny: {caption}: not drawn; needs at least 2 complete trials; 1 so far." in md
    assert md.count("not drawn") == 2  # the others are drawn
    assert "tiny-history" in md and "tiny-confusion" in md


def test_a_study_without_recorded_objectives_is_one_clear_error(tmp_path, monkeypatch):
    """A study another tool made (plain Optuna, no cvstudy records) is refused by name, not guessed at."""
    import optuna

    from cvstudy.orchestrator.errors import ReportError
    from cvstudy.orchestrator.report.data import load_study_data
    from cvstudy.orchestrator.tracking.client import Tracker

    monkeypatch.chdir(tmp_path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    optuna.create_study(study_name="plain", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), 1)
    with pytest.raises(ReportError, match="study 'plain' records no objectives: not a cvstudy sweep's study"):
        load_study_data("plain", storage, Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}"))


def test_the_report_and_the_python_results_refuse_a_missing_or_empty_storage_alike(tmp_path, monkeypatch):
    """`cvstudy report` and `cvstudy.results` read studies through one path: a storage file that is not
    there is named and nothing is created; an empty one says so."""
    import optuna

    import cvstudy
    from cvstudy.orchestrator.commands.report import report
    from cvstudy.orchestrator.errors import ReportError

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for read in (lambda: report([], tracking_uri=uri), lambda: cvstudy.results(tracking_uri=uri)):
        with pytest.raises(ReportError, match=r"optuna\.db: no Optuna storage here"):
            read()
        assert not (tmp_path / "optuna.db").exists()
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")  # a storage with no study
    for read in (lambda: report([], tracking_uri=uri), lambda: cvstudy.results(tracking_uri=uri)):
        with pytest.raises(ReportError, match="no studies in sqlite:///"):
            read()


def test_the_per_class_figure_draws_each_classs_values_where_the_table_holds_them():
    """A hand-made table of two classes: each bar's length is its table value, class 0 on top, its test
    image count in the label, validation recall as the dots."""
    from cvstudy.orchestrator.tracking.figures import per_class_figure, plt

    table = {
        "class": ["cat", "dog"],
        "test_images": [40, 4],
        "test_precision": [0.9, 0.25],
        "test_recall": [0.8, 0.5],
        "test_f1": [0.847, 0.333],
        "val_recall": [0.7, 0.2],
    }
    fig = per_class_figure(table)
    (ax,) = fig.axes
    bars = {c.get_label(): [p.get_width() for p in c.patches] for c in ax.containers}
    assert bars == {"test precision": [0.9, 0.25], "test recall": [0.8, 0.5], "test F1": [0.847, 0.333]}
    for label, container in zip(bars, ax.containers):  # class 0's bar above class 1's (y grows downward)
        first, second = (p.get_y() for p in container.patches)
        assert first < second and ax.yaxis_inverted(), label
    (dots,) = ax.lines
    assert list(dots.get_xdata()) == [0.7, 0.2] and [t.get_text() for t in ax.get_yticklabels()] == [
        "cat (40)",
        "dog (4)",
    ]
    plt.close(fig)


def test_importances_of_a_large_study_come_from_a_seeded_sample_that_says_so():
    import optuna

    from cvstudy.orchestrator.report.figures import importance_sample

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=12)
    same, said = importance_sample(study, limit=12)
    assert same is study and said == "fANOVA on the 12 complete trials"
    sample, said = importance_sample(study, limit=5)
    numbers = [t.number for t in sample.trials]
    assert len(numbers) == 5 and said == "fANOVA on 5 of the 12 complete trials, drawn at random (seed 0)"
    assert {t.params["x"] for t in sample.trials} <= {t.params["x"] for t in study.trials}
    again, _ = importance_sample(study, limit=5)
    assert [t.params["x"] for t in again.trials] == [t.params["x"] for t in sample.trials]  # the same each time
