import pytest

from cvstudy.orchestrator.errors import StudyError
from cvstudy.orchestrator.sweep.study import load_study_spec, shipped_studies
from cvstudy.trainers.config import TrainConfig


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("nme: x\n", "unknown key(s) nme"),
        ("space:\n  lr: {low: 0.1, high: 0.01}\n", "space.lr: low (0.1) must be below high (0.01)"),
        ("space:\n  lr: {low: 0, high: 0.1, log: true}\n", "a log range needs low > 0"),
        ("space:\n  learning_rate: {low: 0.01, high: 0.1}\n", "space.learning_rate: unknown setting"),
        ("space:\n  aug: []\n", "space.aug: empty list of choices"),
        ("space:\n  aug: [none, fancy]\n", "aug must be one of"),
        ("fixed: {epochs: 0}\n", "epochs must be >= 1"),
        ("objective: test_accuracy\n", "objective must be one of"),
        ("sampler: grid\nspace:\n  lr: {low: 0.01, high: 0.1}\n", "grid sampler needs a list"),
        ("overrides:\n  - when: {model: x}\n    set: {lrr: 1}\n", "overrides[0].set: unknown setting(s) lrr"),
        ("trials: -3\n", "trials must be a positive integer"),
        ("space: [1, 2\n", "not readable YAML"),
        # one meaning per name: the class sampler is class_sampler; `sampler` at the top level is Optuna's
        ("space:\n  sampler: [uniform, sqrt]\n", "space.sampler: unknown setting 'sampler'"),
        ("fixed: {sampler: sqrt}\n", "sampler (did you mean class_sampler?)"),
        # settings the sweep decides for every trial would be ignored: refused instead
        ("space:\n  device: [cpu, cuda]\n", "space.device: cannot be set in a study file"),
        ("fixed: {select_metric: val_loss}\n", "fixed.select_metric: cannot be set in a study file"),
        ("keep_checkpoints: 0\n", "keep_checkpoints must be a positive integer"),
        # every seed of a trial is in memory at once: a bound, with where more seeds go
        (
            "repeats: 9\n",
            "repeats must be at most 8; got 9 (a trial trains its seeds at once: "
            "confirm more seeds with `cvstudy confirm --seeds N`",
        ),
    ],
)
def test_bad_study_files_name_the_file_and_the_problem(tmp_path, text, message):
    with pytest.raises(StudyError) as err:
        load_study_spec(_write(tmp_path, text))
    assert str(err.value).startswith(str(tmp_path / "s.yaml")) and message in str(err.value)


def test_precedence_defaults_file_sampled_overrides_cli(tmp_path):
    spec = load_study_spec(
        _write(
            tmp_path,
            """
fixed: {model: resnet50, lr: 0.1, epochs: 7}
space:
  optimizer: [sgd, adamw]
overrides:
  - when: {optimizer: adamw}
    set: {lr: 0.001}
""",
        )
    )
    sgd = spec.config_for({"optimizer": "sgd"})
    assert (
        sgd.optim.lr == 0.1 and sgd.optim.epochs == 7 and sgd.optim.batch_size == TrainConfig().optim.batch_size
    )  # default kept
    assert spec.config_for({"optimizer": "adamw"}).optim.lr == 0.001
    assert spec.config_for({"optimizer": "adamw"}, {"lr": 0.5, "epochs": 2}).optim.lr == 0.5


@pytest.mark.parametrize("path", sorted(shipped_studies().glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_study_files_are_valid(path):
    spec = load_study_spec(path)
    assert spec.space and spec.objective.startswith("val_")


def test_seed_study_is_the_original_grid():
    spec = load_study_spec(shipped_studies() / "reproduction.yaml")
    assert spec.sampler == "grid" and spec.grid_size() == 8
    assert spec.grid == {"model": ["resnet50", "vit_s16"], "pretrained": [False, True], "aug": ["original", "none"]}


def test_baseline_must_lie_in_the_space(tmp_path):
    ok = load_study_spec(_write(tmp_path, "space:\n  aug: [none, basic]\nbaseline: {aug: basic}\n"))
    assert ok.baseline == {"aug": "basic"}
    with pytest.raises(StudyError, match="baseline.aug: 'original' is outside the space"):
        load_study_spec(_write(tmp_path, "space:\n  aug: [none, basic]\nbaseline: {aug: original}\n"))
    with pytest.raises(StudyError, match="baseline.lr: not a dimension"):
        load_study_spec(_write(tmp_path, "space:\n  aug: [none, basic]\nbaseline: {lr: 0.1}\n"))
    # what the space cannot sample, as a warm start's values are judged: between two steps, a fraction
    # for an int, a yes/no for a number
    ranged = "space:\n  batch_size: {low: 32, high: 256, step: 32}\n  lr: {low: 0.001, high: 0.1}\nbaseline: "
    assert load_study_spec(_write(tmp_path, ranged + "{batch_size: 96, lr: 0.01}\n")).baseline["batch_size"] == 96
    for bad in ("{batch_size: 100}", "{batch_size: 64.5}", "{lr: true}", "{lr: .nan}"):
        with pytest.raises(StudyError, match="is outside the space"):
            load_study_spec(_write(tmp_path, ranged + bad + "\n"))


def test_a_studies_folder_in_the_working_directory_wins_over_the_shipped_file(tmp_path, monkeypatch):
    from cvstudy.orchestrator.sweep.study import resolve_study_file

    monkeypatch.chdir(tmp_path)
    assert resolve_study_file("resnet50", None) == shipped_studies() / "resnet50.yaml"
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "resnet50.yaml").write_text("name: mine\n")
    assert resolve_study_file("resnet50", None).resolve() == tmp_path / "studies" / "resnet50.yaml"
    with pytest.raises(StudyError, match="no study file for model 'nope'.*shipped: .*resnet50"):
        resolve_study_file("nope", None)


def test_a_study_names_the_published_study_it_reproduces_from_a_known_list(tmp_path):
    from cvstudy.orchestrator.sweep.study import shipped_studies

    assert load_study_spec(shipped_studies() / "reproduction.yaml").reproduces == "dsba-cv-study"
    with pytest.raises(StudyError, match="reproduces"):
        load_study_spec(_write(tmp_path, "reproduces: a-paper\nspace:\n  aug: [none, basic]\n"))


def test_a_study_file_may_still_name_the_former_preset_seed_and_is_told_once_naming_the_file(tmp_path):
    path = _write(tmp_path, "space:\n  aug: [seed, none]\nbaseline: {aug: seed}\n")
    with pytest.warns(FutureWarning) as said:
        spec = load_study_spec(path)
    assert [str(w.message) for w in said] == [
        f"{path}: aug preset 'seed' is now called 'original'; the old name is accepted until the next release"
    ]
    assert spec.space[0].choices == ("seed", "none")  # as an existing study's storage recorded them
