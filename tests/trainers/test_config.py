import pytest

from cvstudy.trainers.config import ConfigError, TrainConfig


def test_flat_round_trip_and_sections():
    flat = {"lr": "0.01", "aug": "original", "pretrained": "false", "patience": 3, "img_size": None}
    cfg = TrainConfig.from_flat(flat)
    assert cfg.optim.lr == 0.01 and cfg.augmentation.aug == "original" and cfg.run.patience == 3
    assert cfg.network.pretrained is False and cfg.network.img_size is None
    assert TrainConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lrr": 0.1}, "unknown setting(s): lrr (did you mean lr?)"),
        ({"aug": "fancy"}, "aug must be one of none, basic, original, strong"),
        ({"lr": -1}, "lr must be > 0"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"pretrained": "maybe"}, "pretrained must be true or false"),
        ({"val_fraction": 1.0}, "val_fraction must be in (0, 1)"),
        ({"finetune": "head"}, "needs pretrained weights"),
        ({"drw_epoch": 20, "epochs": 10}, "drw_epoch (20) must be below epochs (10)"),
        ({"device": "gpu0"}, "device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_values_are_one_clear_line(values, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_flat(values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_former_preset_name_seed_is_accepted_with_a_warning_and_recorded_as_original():
    with pytest.warns(FutureWarning, match="aug preset 'seed' is now called 'original'"):
        config = TrainConfig.from_flat({"aug": "seed"})
    assert config.to_flat()["aug"] == "original" and config == TrainConfig.from_flat({"aug": "original"})


def test_no_section_shares_a_name_with_a_setting():
    """One meaning per name: ``config.network.model``, never ``config.model.model``."""
    assert not set(TrainConfig.SECTIONS) & set(TrainConfig.keys())


def test_every_field_is_documented():
    docs = TrainConfig.field_docs()
    assert set(docs) == set(TrainConfig.keys())
    assert all(docs.values())


def test_field_docs_need_no_source_files(tmp_path):
    """An installed package may hold bytecode only (no .py files): the help text comes from the
    fields themselves, never from parsing the source."""
    import compileall
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from cvstudy import trainers

    package = tmp_path / "trainers"
    shutil.copytree(Path(trainers.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(package, legacy=True, quiet=1)  # trainers/config.pyc beside nothing
    for source in package.glob("*.py"):
        source.unlink()
    code = "from trainers.config import TrainConfig; import sys; sys.stdout.write(TrainConfig.field_docs()['lr'])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Peak learning rate, reached after warmup, then cosine decay to 0."


def test_a_yes_no_setting_takes_true_false_1_or_0_and_refuses_other_numbers():
    assert TrainConfig.from_flat({"trivial": 1}).augmentation.trivial is True
    assert TrainConfig.from_flat({"trivial": 0}).augmentation.trivial is False
    assert TrainConfig.from_flat({"trivial": "yes"}).augmentation.trivial is True
    for bad in (5, -1, 2.0, 0.5):
        with pytest.raises(ConfigError, match=r"trivial must be true or false"):
            TrainConfig.from_flat({"trivial": bad})
