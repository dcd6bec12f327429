"""``cvstudy export``: a run's checkpoint as an ONNX model, its preprocessing inside, checked with
onnxruntime against what ``cvstudy predict`` computes before it is kept and logged to the run.

The model takes what the run's data is: uint8 images, N x H x W x 3 at the data's resolution (any N),
named ``images``; it converts, normalises and resizes them as evaluation does, and outputs class
probabilities, N x K float32, named ``probabilities``. Where the run resizes, it does so in float after
normalising, as on CUDA; ``cvstudy predict`` on a CPU resizes uint8 images first, which can differ by
the rounding to whole grey levels, so the check compares with that float path and says how the CPU's
own predictions compare.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.inference import Classifier

from ..errors import CheckFailed, UserError
from ..tracking.client import Tracker
from ..tracking.schema import OnnxMeta
from .compare import resolve
from .predict import checkpoint_of

FORMATS = ("onnx",)
PROBABILITY_TOLERANCE = 1e-4
"""Largest absolute difference of a class probability between onnxruntime and PyTorch on the test
images (float32 kernels differ in their last bits); every predicted label must also be the same."""
OPSET = 18  # ONNX opset: what onnxruntime of the last two years runs, Resize and Softmax included
ARTIFACT_DIR = "onnx"  # the model's place in its run's artifacts
BATCH = 256  # test images per onnxruntime call


@dataclass(frozen=True)
class ExportCheck:
    """onnxruntime against PyTorch on the run's test images."""

    images: int
    max_difference: float
    """Largest absolute difference of a probability, against PyTorch's float path."""
    same_labels: int
    """Images whose predicted label is the same."""
    same_labels_as_predict: int
    """Images whose label is the one ``cvstudy predict`` gives on this machine (its CPU resizes uint8)."""


class WithPreprocessing(torch.nn.Module):
    """uint8 N x H x W x 3 -> class probabilities: the run's evaluation pipeline inside the graph, its
    test-time flips included (``Classifier.model``)."""

    scale: torch.Tensor  # 1 x 3 x 1 x 1 buffers: (x / 255 - mean) / std as x * scale + bias
    bias: torch.Tensor

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.model = classifier.model
        self.img_size = int(classifier.meta["img_size"])
        mean = torch.tensor(classifier.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(classifier.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("bias", -mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale + self.bias
        if x.shape[-2:] != (self.img_size, self.img_size):  # known when traced: the data's resolution
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return self.model(x).softmax(1)


def export(
    model: str,
    format: str = "onnx",
    out: str | None = None,
    tracking_uri: str | None = None,
    storage_url: str | None = None,
    data: str | None = None,
    console: Console | None = None,
) -> tuple[Path, ExportCheck]:
    """Export ``model`` (a run id, ``STUDY@best``, ``STUDY#N`` or ``models:/...``), check it, write it to
    ``out`` (default ``model-<run>.onnx``) and log it to the run under ``onnx/``."""
    console = console or Console()
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: cvstudy exports {', '.join(FORMATS)}")
    try:
        import onnxruntime  # noqa: F401 -- checked before anything is loaded
    except ImportError:
        raise UserError("cvstudy export needs onnx, onnxscript and onnxruntime: pip install cvstudy[export]") from None
    tracker = Tracker(tracking_uri)
    run, path = checkpoint_of(tracker, console, run_id=resolve(model, tracker, storage_url))
    run_id = run.info.run_id
    out_path = Path(out or f"model-{run_id[:8]}.onnx")
    classifier = Classifier(path, "cpu", float_resize=True)
    dataset = load_dataset(data if data is not None else classifier.config.dataset.data, *classifier.config.split[1:])
    wrapper = WithPreprocessing(classifier).eval()
    with tempfile.TemporaryDirectory(prefix="cvstudy-export-") as tmp:
        staged = Path(tmp) / out_path.name
        _write_onnx(wrapper, dataset.test_x[:2], staged, run_id, classifier.num_classes)
        check = _check(staged, classifier, Classifier(path, "cpu"), dataset.test_x)
        if check.max_difference > PROBABILITY_TOLERANCE or check.same_labels != check.images:
            raise CheckFailed(
                f"run {run_id}: the ONNX model does not reproduce PyTorch's predictions on the test images "
                f"(largest probability difference {check.max_difference:.2e}, tolerance "
                f"{PROBABILITY_TOLERANCE:.0e}; {check.images - check.same_labels} labels differ); nothing written"
            )
        tracker.client.log_artifact(run_id, str(staged), ARTIFACT_DIR)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(staged.read_bytes())
    console.print(
        f"wrote {out_path}: uint8 N x {dataset.test_x.shape[1]} x {dataset.test_x.shape[2]} x 3 images -> "
        f"{classifier.num_classes} class probabilities; onnxruntime matches PyTorch on {check.images} test images "
        f"(largest difference {check.max_difference:.1e}, every label the same); logged to run {run_id} as "
        f"{ARTIFACT_DIR}/{out_path.name}",
        highlight=False,
    )
    if check.same_labels_as_predict != check.images:
        console.print(
            f"{check.images - check.same_labels_as_predict} of {check.images} labels differ from `cvstudy predict` "
            "on this CPU, which resizes uint8 images before normalising (the model resizes in float, as CUDA does)",
            highlight=False,
        )
    return out_path, check


def _write_onnx(wrapper: torch.nn.Module, sample: np.ndarray, path: Path, run_id: str, num_classes: int) -> None:
    """The traced graph, any batch size, with what it is written into the file's metadata."""
    import onnx

    images = torch.from_numpy(np.ascontiguousarray(sample))
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (images,),
            str(path),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    proto = onnx.load(str(path))
    for key, value in {
        OnnxMeta.RUN_ID: run_id,
        OnnxMeta.INPUT: "uint8 N x H x W x 3 (RGB), as the run's data",
        OnnxMeta.OUTPUT: f"class probabilities, N x {num_classes} float32",
    }.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _check(path: Path, reference: Classifier, predict: Classifier, images: np.ndarray) -> ExportCheck:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate(
        [session.run(["probabilities"], {"images": images[i : i + BATCH]})[0] for i in range(0, len(images), BATCH)]
    )
    expected = reference.probabilities(images)
    labels = got.argmax(1)
    return ExportCheck(
        images=len(images),
        max_difference=float(np.abs(got - expected).max()),
        same_labels=int((labels == expected.argmax(1)).sum()),
        same_labels_as_predict=int((labels == predict.predict(images)).sum()),
    )
