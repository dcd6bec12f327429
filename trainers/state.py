"""Resume states: everything a run needs to continue exactly where it stopped.

``RandomState`` is every random generator training draws from; ``TrainState`` adds the weights, the
optimiser, the step counter, the history, the selection and the early-stopping counter. Saved as one
safetensors file with JSON metadata: no pickles. ``loop.fit`` hands them out and resumes from them.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


@dataclass
class RandomState:
    """Every random generator training draws from (Python, NumPy, torch CPU and CUDA)."""

    python: tuple
    numpy: tuple
    torch_cpu: torch.Tensor
    torch_cuda: list | None

    def to_parts(self) -> tuple[dict, dict]:
        """(tensors, JSON-able values): the state without pickles."""
        tensors = {"random/torch_cpu": self.torch_cpu}
        tensors.update({f"random/cuda/{i}": t for i, t in enumerate(self.torch_cuda or [])})
        version, internal, gauss = self.python
        name, keys, pos, has_gauss, cached = self.numpy
        return tensors, {
            "python": [version, list(internal), gauss],
            "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
            "cuda_devices": len(self.torch_cuda or []),
        }

    @classmethod
    def from_parts(cls, tensors: dict, values: dict) -> RandomState:
        version, internal, gauss = values["python"]
        name, keys, pos, has_gauss, cached = values["numpy"]
        cuda = [tensors[f"random/cuda/{i}"] for i in range(values["cuda_devices"])] or None
        return cls(
            (version, tuple(internal), gauss),
            (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
            tensors["random/torch_cpu"],
            cuda,
        )

    @classmethod
    def capture(cls) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(random.getstate(), tuple(np.random.get_state(legacy=True)), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)


@dataclass
class TrainState:
    """Everything a run needs to continue after ``epoch`` completed epochs exactly as if it had not
    stopped: weights, optimiser, step counter, random state, history, selection and early stopping."""

    epoch: int
    """Epochs completed."""
    step: int
    """Optimiser steps taken (the learning-rate schedule's position)."""
    model: dict
    optimizer: dict
    random: RandomState
    history: list[dict]
    best_row: dict | None
    best_val: dict | None
    best_state: dict | None
    stale_epochs: int
    config: dict | None = None
    """The flat config that trained (the caller fills it in; ``save`` writes it)."""
    FILE: ClassVar[str] = "state.safetensors"

    def to_cpu(self) -> TrainState:
        """A copy that outlives the epoch: every tensor cloned to host memory (the live state's tensors
        are the model's own, which the next step overwrites)."""

        def host(value):
            if isinstance(value, torch.Tensor):
                return value.detach().to("cpu", copy=True)
            if isinstance(value, dict):
                return {k: host(v) for k, v in value.items()}
            if isinstance(value, list):
                return [host(v) for v in value]
            return copy.deepcopy(value)

        return TrainState(
            self.epoch,
            self.step,
            host(self.model),
            host(self.optimizer),
            self.random,
            copy.deepcopy(self.history),
            copy.deepcopy(self.best_row),
            copy.deepcopy(self.best_val),
            host(self.best_state) if self.best_state is not None else None,
            self.stale_epochs,
            copy.deepcopy(self.config),
        )

    def save(self, directory: Path | str) -> Path:
        """One safetensors file (no pickles): tensors by name, everything else as JSON metadata."""
        tensors = {f"model/{k}": v for k, v in self.model.items()}
        tensors.update({f"best/{k}": v for k, v in (self.best_state or {}).items()})
        optim_values: dict = {"param_groups": self.optimizer["param_groups"], "state": {}}
        for index, entry in self.optimizer["state"].items():
            for name, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{index}/{name}"] = value
                else:
                    optim_values["state"].setdefault(str(index), {})[name] = value
        random_tensors, random_values = self.random.to_parts()
        tensors.update(random_tensors)
        meta = {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best_row": self.best_row,
            "best_val": self.best_val,
            "has_best": self.best_state is not None,
            "stale_epochs": self.stale_epochs,
            "optimizer": optim_values,
            "random": random_values,
            "config": self.config,
            "optim_indices": sorted({int(k.split("/")[1]) for k in tensors if k.startswith("optim/")}),
        }
        path = Path(directory) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()},
            str(path),
            metadata={"cvstudy_state": json.dumps(meta)},
        )
        return path

    @classmethod
    def load(cls, path: Path | str) -> TrainState:

        path = Path(path)
        if path.is_dir():
            path = path / cls.FILE
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["cvstudy_state"])
        tensors = load_file(str(path))

        def section(prefix: str) -> dict:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        optim_state: dict = {}
        for index in meta["optim_indices"]:
            optim_state[index] = {**section(f"optim/{index}/"), **meta["optimizer"]["state"].get(str(index), {})}
        optimizer = {"state": optim_state, "param_groups": meta["optimizer"]["param_groups"]}
        return cls(
            meta["epoch"],
            meta["step"],
            section("model/"),
            optimizer,
            RandomState.from_parts(tensors, meta["random"]),
            meta["history"],
            meta["best_row"],
            meta["best_val"],
            section("best/") if meta["has_best"] else None,
            meta["stale_epochs"],
            meta["config"],
        )
