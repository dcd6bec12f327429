import pytest
import torch
import torchvision

from cvstudy.trainers.config import ModelConfig
from cvstudy.trainers.models import WeightsError, build_model, check, create, resolve_weights


def _save(tmp_path, state, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("layout, filename", [("timm", "w.safetensors"), ("torchvision", "w.pth"), ("timm", "w.bin")])
def test_resnet50_weights_load_with_classifier_reset(tmp_path, layout, filename):
    torch.manual_seed(0)
    source = (
        create(ModelConfig(model="resnet50"), 1000) if layout == "timm" else torchvision.models.resnet50()
    ).state_dict()
    path = _save(tmp_path, source, filename)
    model, report = build_model(ModelConfig(model="resnet50", weights=str(path)), num_classes=7)
    got = model.state_dict()
    assert report.reset == ("fc",)
    assert got["fc.weight"].shape == (7, 2048)
    for key in ("conv1.weight", "layer4.2.bn3.running_var", "layer2.0.downsample.0.weight"):
        assert torch.equal(got[key], source[key])


def test_cifar_stem_reinitialises_only_the_stem(tmp_path):
    source = create(ModelConfig(model="resnet50"), 1000).state_dict()
    path = _save(tmp_path, source, "w.safetensors")
    model, report = build_model(ModelConfig(model="resnet50", weights=str(path), cifar_stem=True), 10)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    assert set(report.reset) == {"fc", "conv1"}
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])


def test_vit_position_embedding_is_resampled(tmp_path):
    source = create(ModelConfig(model="test_vit", img_size=32), 1000).state_dict()
    path = _save(tmp_path, source, "vit.safetensors")
    model, report = build_model(ModelConfig(model="test_vit", img_size=64, weights=str(path)), 5)
    assert model.pos_embed.shape[1] > source["pos_embed"].shape[1]
    assert report.reset == ("head",)


def test_truncated_and_mismatched_files_are_clear_errors(tmp_path):
    good = _save(tmp_path, create(ModelConfig(model="resnet50"), 1000).state_dict(), "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"truncated.pth: unreadable weights file"):
        build_model(ModelConfig(model="resnet50", weights=str(truncated)), 10)
    other = _save(tmp_path, create(ModelConfig(model="resnet18"), 1000).state_dict(), "resnet18.safetensors")
    with pytest.raises(
        WeightsError,
        match=r"resnet18.safetensors: does not fit resnet50 \(it names .* first missing: layer1.0.conv3.weight\)",
    ):
        build_model(ModelConfig(model="resnet50", weights=str(other)), 10)
    with pytest.raises(WeightsError, match="weights file not found"):
        resolve_weights(ModelConfig(weights=str(tmp_path / "nope.pth")))


def test_pickled_objects_are_never_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError, match="unreadable weights file"):
        build_model(ModelConfig(model="resnet50", weights=str(path)), 10)


def test_pretrained_without_local_weights_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError) as err:
        check(ModelConfig(model="vit_s16", pretrained=True), 10, offline=True)
    text = str(err.value)
    assert "not available offline" in text and "--weights PATH" in text and "timm/vit_small_patch16_224" in text


def test_head_finetuning_trains_only_the_classifier(tmp_path):
    path = _save(tmp_path, create(ModelConfig(model="test_resnet"), 1000).state_dict(), "w.safetensors")
    model, _ = build_model(ModelConfig(model="test_resnet", weights=str(path), finetune="head"), 4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


def test_unknown_model_is_a_config_error():
    from cvstudy.trainers.config import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'resnet5000'"):
        check(ModelConfig(model="resnet5000"), 10)


@pytest.mark.parametrize(
    ("model", "img_size", "cifar_stem", "fires", "fix"),
    [
        ("resnet18", 32, False, True, "cifar_stem=true"),  # the ImageNet stem, stride 32 on 32 px: 1 x 1
        ("resnet18", 32, True, False, None),  # the CIFAR stem keeps 4 x 4
        ("test_resnet", 16, False, True, "img_size=224"),  # a deep stem: no CIFAR stem to offer
        ("test_resnet", 160, False, False, None),
        ("test_vit", 32, False, True, "img_size=224"),  # 16 px patches on 32 px: 4 patches
    ],
)
def test_the_small_input_check_fires_where_the_stem_leaves_two_by_two_positions_or_fewer(
    model, img_size, cifar_stem, fires, fix
):
    from cvstudy.trainers.models import build_model, small_input_check

    cfg = ModelConfig(model=model, img_size=img_size, cifar_stem=cifar_stem)
    built, _ = build_model(cfg, num_classes=3)
    said = small_input_check(built, cfg, img_size)
    assert (said is not None) == fires, said
    if fires:
        assert f"at {img_size} px" in said and fix in said
    assert built.training  # left as it was found
