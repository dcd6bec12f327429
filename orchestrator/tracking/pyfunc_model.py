"""The code of the MLflow model cvstudy logs for every kept checkpoint ("models from code").

MLflow stores this file as the model's code and the safetensors checkpoint as its one artifact, so no
Python object is pickled anywhere. Input: uint8 images, N x H x W x 3, at the data's resolution (the
model resizes and normalises them as in training). Output: class probabilities, N x K, float32.

    model = mlflow.pyfunc.load_model("models:/<study>@best")
    probabilities = model.predict(images)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

# MLflow advises type hints on ``predict`` when the class is defined, forcing its warning past filters
# ("once"); the logged signature (uint8 images in, probabilities out) already validates the input.
with warnings.catch_warnings():
    warnings.showwarning = lambda *args, **kwargs: None

    class CvstudyClassifier(PythonModel):
        def load_context(self, context) -> None:
            # Imported here: MLflow puts the model's code path (trainers/) on sys.path only when it loads it.
            from trainers.inference import Classifier  # the model's own copy, not the installed cvstudy

            self.classifier = Classifier(Path(context.artifacts["checkpoint"]) / "model.safetensors")

        def predict(self, context, model_input, params=None) -> np.ndarray:
            return self.classifier.probabilities(np.asarray(model_input, dtype=np.uint8))


mlflow.models.set_model(CvstudyClassifier())
