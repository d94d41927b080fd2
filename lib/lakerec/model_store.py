"""What a model folder holds, and the ``LATEST`` pointer: the contract between train, score and evaluate.

``models/<model_version>/`` holds ``inputs.json`` (what the driver pinned for the workers),
``checkpoints/epoch-NNNN.pt`` (rank 0, every epoch), ``best.pt`` (best validation epoch),
``factors.npz`` (what the scorer reads), ``rating_head.npz``, ``model.pt`` (the torch model,
self-contained: :func:`load_model` rebuilds it) and ``meta.json`` (written last: a model without
it is unfinished; a model that has it is never rewritten). ``models/LATEST`` names the finished
model of the latest run date, and moves forward only.

Needs torch but neither ``torch.distributed`` nor Petastorm, so the scorer and the evaluation can
read models without pulling in the trainer.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from lakerec.config import Config, resolve_path
from lakerec.models import MatrixFactorization, RatingHead, TwoTower

log = logging.getLogger(__name__)

INPUTS_FILE = "inputs.json"
META_FILE = "meta.json"
FACTORS_FILE = "factors.npz"
RATING_HEAD_FILE = "rating_head.npz"
MODEL_FILE = "model.pt"
SIDE_FEATURES_FILE = "side_features.npz"
VALIDATION_FILE = "validation.npz"
BEST_FILE = "best.pt"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "LATEST"
CHECKPOINTS_KEPT = 2
# Config keys that may change between a run and its resumption without invalidating checkpoints.
RESUMABLE_KEYS = frozenset({"epochs", "resume", "launcher", "num_processes", "max_restarts",
                            "mlflow", "mlflow_tracking_uri", "mlflow_experiment"})


@dataclass
class TrainInputs:
    """Everything a worker needs, pinned by the driver: files of one table version, sizes, config."""

    model_version: str
    model_dir: str
    files: list[str]
    table_version: int
    total_rows: int
    n_users: int
    n_items: int
    input_versions: dict[str, int]
    train: dict[str, Any]
    side_features: Optional[str] = None  # two_tower: npz of user_side, item_side, trained_items
    validation: Optional[str] = None  # npz for early stopping; None without a validation split
    rating_mean: Optional[float] = None  # mean training rating: set when the rating head trains
    ds: str = ""  # the run date the model is trained for: LATEST moves forward only by it

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainInputs":
        return cls(**json.loads(Path(path).read_text()))

    def fingerprint(self, world_size: int) -> str:
        """What a checkpoint must match to be resumed: data, sizes, training config and world size."""
        pinned = [self.files, self.table_version, self.total_rows, self.n_users, self.n_items,
                  pinned_train(self.train), world_size]
        return hashlib.sha256(json.dumps(pinned, sort_keys=True).encode()).hexdigest()


def pinned_train(train: dict[str, Any]) -> dict[str, Any]:
    """The training config without the keys a run may change and still resume."""
    return {k: v for k, v in train.items() if k not in RESUMABLE_KEYS}


def models_root(cfg: Config) -> Path:
    return Path(resolve_path(cfg.models_dir))


def checkpoint_paths(model_dir: str | Path) -> list[Path]:
    """The model's epoch checkpoints, oldest first."""
    return sorted((Path(model_dir) / CHECKPOINT_DIR).glob("epoch-*.pt"))


def save_checkpoint(model_dir: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write ``checkpoints/epoch-NNNN.pt`` atomically and keep only the newest few."""
    folder = model_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{epoch:04d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint intact
    for old in checkpoint_paths(model_dir)[:-CHECKPOINTS_KEPT]:
        old.unlink()
    return path


def load_checkpoint(model_dir: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    """The newest readable checkpoint of these inputs, on the CPU, or None.

    On the CPU: the RNG states must stay CPU byte tensors, and ``load_state_dict`` moves the
    weights and the optimizer's moments to the model's device. An unreadable file (a disk that
    filled up, a copy cut short) is skipped for the one before it rather than failing every retry.
    """
    for path in reversed(checkpoint_paths(model_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged file
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if state.get("fingerprint") != fingerprint:
            log.warning("ignoring %s: it was trained on other inputs, config or world size", path)
            return None
        return state
    return None


def save_model(path: Path, model: MatrixFactorization, head: Optional[RatingHead], train: dict[str, Any]) -> None:
    """``model.pt``: what :func:`load_model` needs to rebuild the trained model, history included."""
    torch.save({
        "kind": "two_tower" if isinstance(model, TwoTower) else "mf",
        "n_users": model.user.num_embeddings,
        "n_items": model.item.num_embeddings,
        "dim": model.user.embedding_dim,
        "state_dict": model.state_dict(),
        "history": model.history_state() if model.has_history else None,
        "rating_head": head.state_dict() if head is not None else None,
        "train": train,
    }, path)


def load_model(path: Path) -> tuple[MatrixFactorization, Optional[RatingHead]]:
    """Rebuild the model (and its rating head) that :func:`save_model` wrote, in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state, tc = saved["state_dict"], saved["train"]
    if saved["kind"] == "two_tower":
        model: MatrixFactorization = TwoTower(saved["n_users"], saved["n_items"], saved["dim"], state["user_side"],
                                              state["item_side"], tc["hidden"], tc["id_dropout"])
    else:
        model = MatrixFactorization(saved["n_users"], saved["n_items"], saved["dim"])
    if saved["history"] is not None:
        model.load_history_state(saved["history"])
    model.load_state_dict(state)
    head = None
    if saved["rating_head"] is not None:
        head = RatingHead(saved["n_users"], saved["n_items"], saved["dim"], 0.0)
        head.load_state_dict(saved["rating_head"])
        head.eval()
    return model.eval(), head


def write_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` atomically: the last file of a model, the mark that it is finished."""
    path = model_dir / META_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)


def latest_model_dir(cfg: Config) -> Path:
    """The directory of the last model that finished training (``models/LATEST``)."""
    root = models_root(cfg)
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        raise FileNotFoundError(f"no trained model under {root}: run the train job first")
    return root / pointer.read_text().strip()


def trained_ds(model_dir: Path) -> str:
    """The run date a finished model was trained for ("" for models from before dates were recorded)."""
    meta = model_dir / META_FILE
    return json.loads(meta.read_text()).get("ds", "") if meta.is_file() else ""


def publish_latest(model_dir: Path, ds: str) -> bool:
    """Point ``models/LATEST`` at ``model_dir``, unless it names a model of a later ``ds``.

    ``LATEST`` moves forward only: a backfill of an earlier night never takes serving back in time.
    Atomic (rename), so scorers never read a half-written pointer. True when it moved.
    """
    pointer = model_dir.parent / LATEST_FILE
    if pointer.is_file():
        current = model_dir.parent / pointer.read_text().strip()
        if trained_ds(current) > ds:
            log.info("LATEST stays at %s (ds %s): %s is for the earlier ds %s",
                     current.name, trained_ds(current), model_dir.name, ds)
            return False
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(model_dir.name)
    os.replace(tmp, pointer)
    return True
