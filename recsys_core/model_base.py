"""What every trainable model shares: constructor settings, safetensors weights + JSON config, device placement.

Nothing is unpickled on load: the weights are safetensors and the settings JSON.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recsys_core.config import Config
from recsys_core.errors import MissingArtifactError
from recsys_core.io import atomic_path

WEIGHTS = "model.safetensors"
CONFIG = "config.json"

T = TypeVar("T", bound="SavedModel")


class SavedModel(ABC):
    method: ClassVar[str]

    def __init__(self, n_items: int, hparams: dict[str, Any], device: torch.device | str = "cpu"):
        self.n_items = n_items
        self.hparams = dict(hparams)
        self.device = torch.device(device)
        self.model = self.build_model().to(self.device)

    @classmethod
    @abstractmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict[str, Any]:
        """This method's settings from the typed config (what save() writes and load() rebuilds from)."""

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / WEIGHTS) as tmp:
            save_file(state, str(tmp))
        meta = {"method": self.method, "n_items": self.n_items, "hparams": self.hparams}
        with atomic_path(folder / CONFIG) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls: type[T], folder: Path, device: torch.device | str = "cpu") -> T:
        folder = Path(folder)
        for name in (WEIGHTS, CONFIG):
            if not (folder / name).exists():
                raise MissingArtifactError(f"{folder / name} is missing; train the model first")
        meta = json.loads((folder / CONFIG).read_text())
        if meta["method"] != cls.method:
            raise MissingArtifactError(f"{folder} holds a {meta['method']!r} model, not {cls.method!r}")
        instance = cls(meta["n_items"], meta["hparams"], device)
        instance.model.load_state_dict(load_file(str(folder / WEIGHTS), device=str(instance.device)))
        instance.model.eval()
        return instance

    def left_pad(self, sequences: Sequence[np.ndarray], length: int) -> torch.Tensor:
        """(B, length) item ids, each row the last ``length`` items right-aligned, 0 = padding."""
        out = np.zeros((len(sequences), length), dtype=np.int64)
        for row, seq in enumerate(sequences):
            tail = np.asarray(seq[-length:] if length else [], dtype=np.int64)
            if len(tail):
                out[row, -len(tail) :] = tail
        return torch.as_tensor(out, device=self.device)


def method_of(folder: Path) -> str:
    """The method name saved in ``folder/config.json``."""
    path = Path(folder) / CONFIG
    if not path.exists():
        raise MissingArtifactError(f"{path} is missing; is this a saved model folder?")
    return json.loads(path.read_text())["method"]
