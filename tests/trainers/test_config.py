import pytest

from trainers.config import ConfigError, TrainConfig


def test_flat_round_trip_and_sections():
    cfg = TrainConfig.from_flat({"lr": "0.01", "aug": "seed", "pretrained": "false", "patience": 3, "img_size": None})
    assert cfg.optim.lr == 0.01 and cfg.aug.aug == "seed" and cfg.model.pretrained is False and cfg.run.patience == 3
    assert TrainConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lrr": 0.1}, "unknown setting(s): lrr (did you mean lr?)"),
        ({"aug": "fancy"}, "aug must be one of none, basic, seed, strong"),
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


def test_every_field_is_documented():
    docs = TrainConfig.field_docs()
    assert set(docs) == set(TrainConfig.keys())
    assert all(docs.values())


def test_a_yes_no_setting_takes_true_false_1_or_0_and_refuses_other_numbers():
    assert TrainConfig.from_flat({"trivial": 1}).aug.trivial is True
    assert TrainConfig.from_flat({"trivial": 0}).aug.trivial is False
    assert TrainConfig.from_flat({"trivial": "yes"}).aug.trivial is True
    for bad in (5, -1, 2.0, 0.5):
        with pytest.raises(ConfigError, match=r"trivial must be true or false"):
            TrainConfig.from_flat({"trivial": bad})
