"""A saved checkpoint as a classifier: the model, its input pipeline and its precision, set up once.

``cvstudy predict`` and the MLflow pyfunc model both predict through ``Classifier``, so a logged
model, a registered model and the command line give the same probabilities for the same images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .augment import NO_AUGMENTATION, BatchTransform
from .loop import Execution, load_checkpoint, predict_logits
from .models import normalisation, with_tta


class Classifier:
    """Class probabilities for uint8 N x H x W x 3 images, as the checkpoint's run evaluated them: the
    same resize and normalisation, autocast and memory format (resolved on this device as training
    resolved them on its own), under the run's test-time augmentation. The model runs eager: a compiled
    run's checkpoint predicts the same up to the last bits of floating point."""

    def __init__(self, checkpoint: Path | str, device: torch.device | str = "cpu", float_resize: bool = False):
        """``float_resize``: resize after normalising, in float, on every device (as CUDA and an exported
        ONNX model do), not in uint8 first where the device can (the CPU)."""
        model, self.config, self.meta = load_checkpoint(checkpoint)
        self.device = torch.device(device)
        execution = Execution.resolve(self.config.run, self.device)
        network = model.to(self.device, memory_format=execution.memory_format)  # type: ignore[call-overload]
        self.model = with_tta(network, self.config.network.tta).eval()
        """The network as it predicts: wrapped in ``FlipAveraged`` when the run's ``tta`` is hflip."""
        mean, std = normalisation(model)
        self.mean, self.std = mean, std
        self.transform = BatchTransform(
            NO_AUGMENTATION,
            self.meta["img_size"],
            mean,
            std,
            channels_last=execution.channels_last,
            uint8_resize=not float_resize,
        )
        self.amp = execution.amp

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """N x K float32 class probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).to(self.device)
        return predict_logits(self.model, x, self.transform, amp=self.amp).softmax(1).cpu().numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """N class indices, each image's most probable class."""
        return self.probabilities(images).argmax(1)
