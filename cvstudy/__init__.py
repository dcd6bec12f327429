"""cvstudy: an experiment-tracking sweep orchestrator for image classification studies.

The command line is ``cvstudy`` (``cvstudy --help``); the same work from Python:

    import cvstudy

    cvstudy.sweep("resnet50", trials=4, epochs=2)   # run or resume a study (Optuna + MLflow)
    cvstudy.results("resnet50")                      # its trials as a pandas DataFrame
    cvstudy.report("resnet50")                       # the HTML/Markdown/CSV report
    cvstudy.load_model("resnet50@best").predict(images)
    cvstudy.train(model="resnet50", epochs=1)        # one run

The packages: ``cvstudy.trainers`` (the trainer core: data, augmentation, models, the training loop,
metrics; it never imports Optuna or MLflow), ``cvstudy.orchestrator`` (the command line, sweeps,
MLflow bookkeeping, reports) and ``cvstudy.studies`` (the shipped study files). Errors a user can cause
are ``cvstudy.CvstudyError`` (bad input: ``cvstudy.UserError`` and its kin).
"""

from cvstudy.orchestrator.api import TrainOutcome, load_model, report, results, sweep, train
from cvstudy.orchestrator.errors import CvstudyError, UserError
from cvstudy.trainers.config import TrainConfig

__all__ = [
    "CvstudyError",
    "TrainConfig",
    "TrainOutcome",
    "UserError",
    "load_model",
    "report",
    "results",
    "sweep",
    "train",
]
