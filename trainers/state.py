"""Resume states: everything a run needs to continue exactly where it stopped.

``RandomState`` holds the run's own generators, which every draw of training comes from;
``TrainState`` adds the weights, the optimiser, the step counter, the history, the selection and the
early-stopping counter. Saved as one safetensors file with JSON metadata: no pickles.
``loop.fit`` hands them out and resumes from them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


@dataclass(kw_only=True)
class RandomState:
    """The states of a run's own generators (``loop.Generators``): every draw of a run comes from them."""

    device: torch.Tensor
    """The torch generator's state on the training device (a uint8 tensor on the host)."""
    host: dict
    """The NumPy generator's ``bit_generator.state`` (JSON-able)."""

    def to_parts(self) -> tuple[dict, dict]:
        """(tensors, JSON-able values): the state without pickles."""
        return {"random/device": self.device}, {"host": self.host}

    @classmethod
    def from_parts(cls, tensors: dict, values: dict) -> RandomState:
        return cls(device=tensors["random/device"], host=values["host"])


@dataclass(kw_only=True)
class TrainState:
    """Everything a run needs to continue after ``epoch`` completed epochs exactly as if it had not
    stopped: weights, optimiser, step counter, random state, history, selection, early stopping and
    the weight average."""

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
    ema: dict | None = None
    """The weight average's tensors (``OptimConfig.ema``); None when the run averages none."""
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
            epoch=self.epoch,
            step=self.step,
            model=host(self.model),
            optimizer=host(self.optimizer),
            random=RandomState(device=host(self.random.device), host=copy.deepcopy(self.random.host)),
            history=copy.deepcopy(self.history),
            best_row=copy.deepcopy(self.best_row),
            best_val=copy.deepcopy(self.best_val),
            best_state=host(self.best_state) if self.best_state is not None else None,
            stale_epochs=self.stale_epochs,
            ema=host(self.ema) if self.ema is not None else None,
            config=copy.deepcopy(self.config),
        )

    def save(self, directory: Path | str) -> Path:
        """One safetensors file (no pickles): tensors by name, everything else as JSON metadata."""
        tensors = {f"model/{k}": v for k, v in self.model.items()}
        tensors.update({f"best/{k}": v for k, v in (self.best_state or {}).items()})
        tensors.update({f"ema/{k}": v for k, v in (self.ema or {}).items()})
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
            "has_ema": self.ema is not None,
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
            epoch=meta["epoch"],
            step=meta["step"],
            model=section("model/"),
            optimizer=optimizer,
            random=RandomState.from_parts(tensors, meta["random"]),
            history=meta["history"],
            best_row=meta["best_row"],
            best_val=meta["best_val"],
            best_state=section("best/") if meta["has_best"] else None,
            stale_epochs=meta["stale_epochs"],
            ema=section("ema/") if meta.get("has_ema") else None,  # states written before ema have none
            config=meta["config"],
        )
