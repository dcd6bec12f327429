"""Models from ``timm.create_model`` only, plus pretrained weights the way timm finds them.

Weights come from ``--weights PATH`` (.safetensors, or .pth/.pt/.bin read with ``weights_only=True``),
else the local Hugging Face cache (``try_to_load_from_cache``: no request), else a download of timm's
default pretrained tag from the Hub (``hf_hub_download``), unless offline (``HF_HUB_OFFLINE=1`` or
``--offline``). Downloads happen in ``check``, before any run exists; ``build_model`` reads the cache.

Loading is timm's own: ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": PATH})``
reads the file (``timm.models.load_state_dict``: safetensors or weights-only torch files, training
wrappers unwrapped), applies the family's checkpoint filter (ViT position embeddings resampled to the
input size) and drops the classifier when the dataset has another number of classes. cvstudy checks
first that the file names every other tensor of the model, because timm loads non-strictly whenever it
drops the classifier and would leave unnamed tensors at their random initialisation without an error.
A file with other names (a port with its own) is refused: tensors are matched by name only, since equal
shapes in the same order are not equal meaning; rename its tensors to timm's once, by a mapping you can
check.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from torch import nn

from .config import ModelConfig
from .errors import ConfigError, WeightsError

log = logging.getLogger("cvstudy")


@dataclass(frozen=True)
class WeightsReport:
    source: str
    loaded: int
    reset: tuple[str, ...]
    """Model tensors left at their fresh initialisation (classifier, CIFAR stem)."""
    ignored: tuple[str, ...]
    """Tensors in the file that the model has no place for."""
    holding: int = -1
    """Of the ``loaded`` tensors, how many hold the file's values once the model is built, read back from
    the model (-1: not checked): a load that silently changed nothing holds none."""

    LEAST_SHARE = 0.9  # below this share of loaded tensors holding the file's values, the load is suspect

    def check(self) -> str | None:
        """A reviewer's warning when the weights did not land, else None."""
        if self.holding < 0 or self.holding >= self.LEAST_SHARE * self.loaded:
            return None
        return (
            f"pretrained weights: only {self.holding} of the {self.loaded} tensors loaded from {self.source} hold "
            "the file's values in the model; the run trained mostly from a random initialisation"
        )

    def summary(self) -> str:
        text = f"loaded {self.loaded} tensors by name from {self.source}"
        if self.reset:
            text += f"; re-initialised {', '.join(self.reset)}"
        if self.ignored:
            more = " ..." if len(self.ignored) > 4 else ""
            text += f"; ignored {len(self.ignored)} file tensors ({', '.join(self.ignored[:4])}{more})"
        return text


# ----------------------------------------------------------------------------- building
def timm_kwargs(cfg: ModelConfig, num_classes: int) -> dict:
    kwargs = {"num_classes": num_classes, "drop_rate": cfg.drop_rate}
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.timm_name)
    # Transformers bake the patch grid into the model; convnets take any size.
    if cfg.img_size is not None and pretrained_cfg is not None and pretrained_cfg.to_dict().get("fixed_input_size"):
        kwargs["img_size"] = cfg.img_size
    return kwargs


def create(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A freshly initialised model (no weights loaded)."""
    if not timm.is_model(cfg.timm_name):
        close = timm.list_models(f"*{cfg.timm_name.split('_')[0]}*")[:5]
        raise ConfigError(f"unknown model {cfg.model!r}; try a timm name such as {', '.join(close) or 'resnet50'}")
    return with_stem(cfg, timm.create_model(cfg.timm_name, pretrained=False, **timm_kwargs(cfg, num_classes)))


def with_stem(cfg: ModelConfig, model: nn.Module) -> nn.Module:
    """The model with the CIFAR stem when ``cfg.cifar_stem`` (a fresh 3x3 conv1, no max-pool)."""
    if cfg.cifar_stem:
        if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")):
            raise ConfigError(f"cifar_stem applies to ResNets with a single-conv stem; {cfg.model} has none")
        # CIFAR stem: 3x3 stride-1 conv, no max-pool, so 32 px inputs keep 8x more resolution.
        width = getattr(model.conv1, "out_channels")  # noqa: B009 -- nn.Module types its children as Tensor | Module
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def check(cfg: ModelConfig, num_classes: int, offline: bool = False) -> Path | None:
    """Everything about the model that can fail, checked before any run or training starts: the name,
    the CIFAR stem's applicability (built on the meta device: no memory, no time) and the weights file,
    downloaded into the Hugging Face cache here unless ``offline`` (training then reads the cache), read
    and loaded into the model once, so a file that does not fit stops the command before any run exists."""
    with torch.device("meta"):
        create(cfg, num_classes)
    path = resolve_weights(cfg, offline=offline)
    if path is not None:
        pretrained(cfg, num_classes, path)  # the model is dropped; training loads it again
    return path


def build_model(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, WeightsReport | None]:
    """Create the model, load weights when asked, freeze the backbone for finetune=head."""
    weights = resolve_weights(cfg)  # cache only: the orchestrator's check() downloaded what was missing
    if weights is None:
        model, report = create(cfg, num_classes), None
    else:
        model, report = pretrained(cfg, num_classes, weights)
        log.info("weights: %s", report.summary())
    if cfg.finetune == "head":
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)  # type: ignore[operator]  # timm's; nn.Module types it as an attribute
    return model, report


def normalisation(model: nn.Module) -> tuple[tuple, tuple]:
    """Mean and std the model's pretrained weights expect (ImageNet's for most)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


class FlipAveraged(nn.Module):
    """Test-time augmentation by horizontal flips: the mean of the logits of each image and of its mirror
    (two forward passes). Holds the network as ``model``; save that one's weights, not this wrapper's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N x C x H x W; dim 3 is the width
        return (self.model(x) + self.model(x.flip(3))) / 2


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """The model as it predicts under ``ModelConfig.tta``: itself (none) or ``FlipAveraged`` (hflip)."""
    return FlipAveraged(model) if tta == "hflip" else model


def default_img_size(cfg: ModelConfig, data_size: int) -> int:
    """The input side: the config's, else the model's fixed size (ViT: 224), else the data's."""
    if cfg.img_size is not None:
        return cfg.img_size
    pcfg = timm.models.get_pretrained_cfg(cfg.timm_name)
    if pcfg is not None and pcfg.to_dict().get("fixed_input_size"):
        return int(pcfg.input_size[-1])
    return data_size


# ----------------------------------------------------------------------------- resolving weights
# Files timm's pretrained tags ship under, in timm's own order of preference.
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def offline_env() -> bool:
    """HF_HUB_OFFLINE set to a true value, as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def hub_repo(timm_name: str) -> str | None:
    """The Hugging Face repo of the model's default pretrained tag (``timm/resnet50.a1_in1k``)."""
    pcfg = timm.models.get_pretrained_cfg(timm_name)
    return getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None


def cache_dir() -> str:

    return str(constants.HF_HUB_CACHE)


def hf_cache_file(timm_name: str) -> tuple[str | None, Path | None]:
    """(hub repo id, cached weights file or None) for the model's default pretrained tag. Makes no request."""
    repo = hub_repo(timm_name)
    if not repo:
        return None, None

    for filename in HUB_FILENAMES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return repo, Path(found)
    return repo, None


def download(timm_name: str, model: str) -> Path:
    """Fetch the model's default pretrained weights into the Hugging Face cache (``hf_hub_download``,
    timm's way); WeightsError in one line when the hub cannot be reached or has no such file."""
    repo = hub_repo(timm_name)
    if not repo:
        raise WeightsError(f"{model} has no pretrained weights on the Hugging Face Hub in timm; pass --weights PATH")
    how = (
        f"on a machine with internet run `cvstudy weights pull {model}` and copy {cache_dir()} to this machine's "
        "Hugging Face cache, or pass --weights PATH"
    )
    for filename in HUB_FILENAMES:
        try:
            # The tag's default revision, as timm downloads it; the run records the commit it resolved to
            # (weights_origin: hub <repo>@<commit>).
            return Path(hf_hub_download(repo, filename))  # nosec B615
        except EntryNotFoundError as err:
            if not isinstance(err, LocalEntryNotFoundError):
                continue  # a 404 for this name: timm's tags ship one of these names
            # Unreachable (huggingface_hub retried with backoff first): name the network error under it.
            cause = err.__cause__ or err
            reason = " ".join(str(cause).split())[:300] or type(cause).__name__
            raise WeightsError(
                f"could not download {repo}/{filename} from {constants.ENDPOINT} "
                f"({type(cause).__name__}: {reason}); {how}"
            ) from None
        except Exception as err:  # noqa: BLE001 -- HTTP and repository errors: one line for the user
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            raise WeightsError(
                f"could not download {repo}/{filename} from {constants.ENDPOINT} "
                f"({type(err).__name__}: {reason}); {how}"
            ) from None
    raise WeightsError(
        f"could not download {repo}/{HUB_FILENAMES[0]} from {constants.ENDPOINT} (404 Not Found, and "
        f"none of {', '.join(HUB_FILENAMES[1:])} either); {how}"
    )


def weights_origin(path: Path) -> str:
    """Where a weights file came from: ``hub <repo>@<commit>`` for a Hugging Face cache file, else its path."""
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        repo_dir = parts[i - 1]
        if repo_dir.startswith("models--") and i + 1 < len(parts):
            return f"hub {repo_dir.removeprefix('models--').replace('--', '/')}@{parts[i + 1]} ({path.name})"
    return str(path)


def resolve_weights(cfg: ModelConfig, offline: bool = True) -> Path | None:
    """The weights file to load, None when training from scratch; WeightsError when none is found.
    Order: ``cfg.weights``; the local Hugging Face cache; a download from the Hub unless ``offline``
    (or HF_HUB_OFFLINE). Call it before any run is created or any training starts."""
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found")
        if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise WeightsError(
                f"{path}: unsupported weights format {path.suffix!r}; use .safetensors, .pth, .pt or .bin"
            )
        return path
    if not cfg.pretrained:
        return None
    repo, found = hf_cache_file(cfg.timm_name)
    if found is not None:
        return found
    if not (offline or offline_env()):
        return download(cfg.timm_name, cfg.model)
    how = (
        f"run `cvstudy weights pull {cfg.model}` on a machine with internet and copy its cache to {cache_dir()}, or "
        if repo
        else ""
    )
    named = f"{cfg.model} ({repo})" if repo else cfg.model
    raise WeightsError(
        f"pretrained weights for {named} are not available offline (HF_HUB_OFFLINE or --offline): "
        f"none given with --weights and none in the local Hugging Face cache ({cache_dir()}); {how}"
        f"pass --weights PATH (.safetensors/.pth/.bin), or train with --no-pretrained"
    )


# ----------------------------------------------------------------------------- loading weights
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read by timm (never unpickling arbitrary objects)."""
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as err:  # noqa: BLE001 -- truncated, corrupt or foreign files all land here
        # The whole message on one line: PyTorch's weights-only refusal explains itself over several.
        reason = " ".join(str(err).split()) or type(err).__name__
        raise WeightsError(f"{path}: unreadable weights file ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def _tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def pretrained(cfg: ModelConfig, num_classes: int, path: Path) -> tuple[nn.Module, WeightsReport]:
    """The model with the weights of ``path``, through timm, when the file names every tensor of the model
    but the classifier; the classifier is re-initialised when its shape differs, and so is the CIFAR stem."""
    state = _tensors(read_state_dict(path))
    kwargs = timm_kwargs(cfg, num_classes)
    with torch.device("meta"):  # the tensors the file must provide: names and shapes, no memory
        target = _tensors(timm.create_model(cfg.timm_name, pretrained=False, **kwargs).state_dict())
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.timm_name)
    classifier = (pretrained_cfg.to_dict().get("classifier") if pretrained_cfg else None) or "fc"
    head = {k for k in target if k.startswith(f"{classifier}.")}
    if all(k in state for k in target if k not in head):
        # The file's own class count, so timm drops (and re-initialises) the classifier only when it differs.
        file_classes = state[f"{classifier}.weight"].shape[0] if f"{classifier}.weight" in state else -1
        overlay = {"file": str(path), "num_classes": file_classes}
        try:
            model = timm.create_model(cfg.timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except RuntimeError as err:  # a tensor of the right name and the wrong shape
            detail = " ".join(str(err).split())
            raise WeightsError(f"{path}: does not fit {cfg.timm_name} ({detail[:300]})") from None
        loaded = [k for k in target if k not in head or file_classes == num_classes]
        reset = tuple(sorted({k.rsplit(".", 1)[0] for k in target if k not in loaded}))
        report = WeightsReport(
            weights_origin(path),
            len(loaded),
            reset,
            tuple(k for k in state if k not in target),
            holding(model, {k: state[k] for k in loaded}),
        )
    else:
        # Tensors are matched by name only: equal shapes in the same order are not equal meaning.
        missing = [k for k in target if k not in head and k not in state]
        needed = len([k for k in target if k not in head])
        raise WeightsError(
            f"{path}: does not fit {cfg.timm_name} (it names {needed - len(missing)} of the {needed} tensors the "
            f"model needs; first missing: {missing[0]}); save it under timm's tensor names (docs/models.md)"
        )
    if cfg.cifar_stem:
        model = with_stem(cfg, model)
        report = dataclasses.replace(
            report, reset=tuple(sorted({*report.reset, "conv1"})), loaded=report.loaded - ("conv1.weight" in target)
        )
    return model, report


def holding(model: nn.Module, expected: dict) -> int:
    """How many of ``expected``'s tensors (``{model key: file tensor}``) the built model holds, value for
    value (the file's tensor cast to the model's dtype, as loading does)."""
    current = model.state_dict()
    return sum(
        1
        for k, v in expected.items()
        if k in current and current[k].shape == v.shape and torch.equal(current[k], v.to(current[k].dtype))
    )


def small_input_check(model: nn.Module, cfg: ModelConfig, img_size: int) -> str | None:
    """A reviewer's warning when the model's input stem throws away most of the image: at ``img_size``
    its last feature map has at most 2 x 2 positions (an ImageNet ResNet stem on 32 px: 1 x 1), with the
    setting that fixes it. One forward pass of one blank image, on the CPU."""
    try:
        with torch.no_grad():
            features = model.eval().forward_features(torch.zeros(1, 3, img_size, img_size))  # type: ignore[operator]
    except Exception:  # noqa: BLE001 -- a model without timm's forward_features: nothing to say
        return None
    finally:
        model.train()
    if features.dim() == 4:  # convnets: (B, C, H, W)
        positions = int(features.shape[-2] * features.shape[-1])
        shown = f"{features.shape[-2]} x {features.shape[-1]}"
    elif features.dim() == 3:  # transformers: (B, tokens, C), class and register tokens first
        positions = int(features.shape[1]) - int(getattr(model, "num_prefix_tokens", 0))
        shown = f"{positions} patches"
    else:
        return None
    if positions > 4:
        return None
    stem = isinstance(getattr(model, "conv1", None), nn.Conv2d) and isinstance(
        getattr(model, "maxpool", None), nn.Module
    )
    has_pool = stem and not isinstance(getattr(model, "maxpool"), nn.Identity)  # noqa: B009 -- as with_stem reads it
    fix = "cifar_stem=true (a 3x3 stem without max-pool) or img_size=224" if has_pool else "img_size=224"
    return (
        f"small input: at {img_size} px {cfg.model}'s features are {shown} positions, most of the image is "
        f"lost in its stem; set {fix}"
    )
