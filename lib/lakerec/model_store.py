"""What a model folder holds, and the ``LATEST`` pointer: the contract between train, score and evaluate.

A model is trained in ``models/.<model_version>.partial/`` and renamed to ``models/<model_version>/``
once finished, so a model folder appears whole. It holds ``inputs.json`` (what the driver pinned for
the workers; credentials redacted once finished), ``checkpoints/epoch-NNNN.pt`` (rank 0, every
epoch), ``best.pt`` (best validation epoch), ``factors.npz`` (what the scorer reads),
``rating_head.npz``, ``model.pt`` (the torch model, self-contained: :func:`load_model` rebuilds it)
and ``meta.json`` (written last: a model that has it is never trained again). Each night trains a serving model (all history as of ``ds``: what users
get) and, when due, a backtest model (the train split: what the evaluation scores). ``models/LATEST``
names the serving model of the latest run date, and moves forward only.

Needs torch but neither ``torch.distributed`` nor Petastorm, so the scorer and the evaluation can
read models without pulling in the trainer.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from lakerec import faults
from lakerec.config import Config, TrainConfig, resolve_path
from lakerec.models import MatrixFactorization, RatingHead, TwoTower
from lakerec.redaction import redacted

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
PARTIAL_SUFFIX = ".partial"
SERVING, BACKTEST = "serving", "backtest"  # the two roles of a night's models
CHECKPOINTS_KEPT = 2
# Config keys that may change between a run and its resumption without invalidating checkpoints.
RESUMABLE_KEYS = frozenset({"epochs", "resume", "launcher", "ranks_on", "num_processes", "max_restarts",
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
    role: str = SERVING  # serving (all history; moves LATEST) or backtest (the train split)
    warm_start: Optional[str] = None  # model.pt of the previous night's serving model to start from

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainInputs":
        return cls(**json.loads(Path(path).read_text()))

    def fingerprint(self, world_size: int) -> str:
        """What a checkpoint must match to be resumed: data, sizes, training config and world size."""
        pinned = [self.files, self.table_version, self.total_rows, self.n_users, self.n_items,
                  pinned_train(self.train), world_size, self.warm_start]
        return hashlib.sha256(json.dumps(pinned, sort_keys=True).encode()).hexdigest()


def pinned_train(train: dict[str, Any]) -> dict[str, Any]:
    """The training config without the keys a run may change and still resume."""
    return {k: v for k, v in train.items() if k not in RESUMABLE_KEYS}


DEFAULT_RECENCY_DECAY = 2.0  # train.recency_decay for splits that hold out the future (BENCHMARKS.md "Quality")
DEFAULT_HISTORY_DECAY = 5.0  # train.history_decay for the same splits (BENCHMARKS.md "Quality")


def resolved_train(cfg: Config) -> TrainConfig:
    """``cfg.train`` with the null decays resolved by the split: on when it holds out the future.

    Under ``random_user`` held-out items are no later than the train ones, so weighting recent
    examples only discards data (measured in BENCHMARKS.md "Quality"). What the workers receive
    and ``meta.json`` records.
    """
    time_based = cfg.features.split != "random_user"
    tc = cfg.train
    return replace(
        tc,
        recency_decay=tc.recency_decay if tc.recency_decay is not None else (DEFAULT_RECENCY_DECAY if time_based else 0.0),
        history_decay=tc.history_decay if tc.history_decay is not None else (DEFAULT_HISTORY_DECAY if time_based else 0.0),
    )


def model_version(cfg: Config, ds: str, role: str, table_version: int) -> str:
    """``<model>-<role>-<ds>-t<examples version>-<config digest>``: another training config for the
    same day gets its own folder, so training it never touches the model ``LATEST`` points to. The
    keys a run may change and still resume (epochs, launcher, ...) are left out, as for checkpoints;
    a serving model's digest also covers how it starts (``nightly.warm_start``)."""
    recipe: dict[str, Any] = {"train": pinned_train(asdict(resolved_train(cfg)))}
    if role == SERVING:
        recipe["warm_start"] = cfg.nightly.warm_start
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.train.model.replace('_', '')}-{role}-{ds}-t{table_version}-{digest}"


def finished_model_dir(cfg: Config, ds: str, role: str, table_version: int) -> Path:
    """The finished ``role`` model of ``ds`` trained on examples version ``table_version``, or a clear error."""
    version = model_version(cfg, ds, role, table_version)
    model_dir = models_root(cfg) / version
    if not (model_dir / META_FILE).is_file():
        raise FileNotFoundError(f"no finished {role} model {version} for ds={ds}: run the train job for {ds} first")
    return model_dir


def models_root(cfg: Config) -> Path:
    return Path(resolve_path(cfg.models_dir))


def partial_dir(root: Path, version: str) -> Path:
    """Where ``version`` trains until it is finished and renamed to ``root / version``."""
    return root / f".{version}{PARTIAL_SUFFIX}"


class ModelLockedError(RuntimeError):
    """Another run holds the lock of the model version this run would train."""


@contextmanager
def lock(root: Path, version: str) -> Iterator[Path]:
    """Hold ``root/.<version>.lock`` while this run trains ``version``: a second run (a retry while the
    first driver's ranks still run, a manual run beside the scheduled one) fails at once instead of
    racing on the same folder. An OS file lock, so a driver that dies releases it with its process."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{version}.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ModelLockedError(f"{version} is being trained by another run ({handle.read().strip() or 'unknown'}; "
                                   f"lock {path}): wait for it, or stop it, then rerun") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write`` a temporary file named for this process beside ``path``, then rename it over ``path``:
    a kill mid-write leaves the previous file whole, and two writers never share a temporary name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    faults.wrote(path.name)


def save_best(model_dir: Path, state: dict[str, Any]) -> None:
    """``best.pt``: the weights of the best validation epoch so far (atomic)."""
    atomic_write(model_dir / BEST_FILE, lambda tmp: torch.save(state, tmp))


def load_best(model_dir: Path) -> Optional[dict[str, Any]]:
    """``best.pt`` on the CPU, or None (with a warning) when it is missing or damaged: the last epoch's
    weights are published instead of failing every retry on the same file."""
    try:
        return torch.load(model_dir / BEST_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        log.warning("cannot read %s (%s): publishing the last epoch's weights instead", model_dir / BEST_FILE, exc)
        return None


def finish(partial: Path, version: str) -> Path:
    """Rename a trained model folder into place (atomic): readers see it whole or not at all. Then
    its ``inputs.json`` loses the credentials only the workers needed (:func:`redact_inputs`)."""
    final = partial.parent / version
    os.replace(partial, final)
    faults.wrote(version)
    redact_inputs(final)
    return final


def redact_inputs(model_dir: Path) -> None:
    """Rewrite a finished model's ``inputs.json`` with its training config redacted (an MLflow URI's
    password or token), atomically; the next train run for the night does it too, should this one stop
    between the rename and here. A finished model is never trained again, so nothing needs the real values."""
    path = model_dir / INPUTS_FILE
    if not path.is_file():
        return
    inputs = TrainInputs.load(path)
    clean = redacted(inputs.train)
    if clean != inputs.train:
        staged = path.with_name(f".{INPUTS_FILE}.{uuid.uuid4().hex}")
        replace(inputs, train=clean).save(staged)
        os.replace(staged, path)


def finished_models(root: Path) -> list[dict[str, Any]]:
    """``meta.json`` of every finished model under ``root``, with its folder as ``path``."""
    found = []
    for meta in root.glob(f"*/{META_FILE}"):
        if not meta.parent.name.startswith("."):
            found.append({**json.loads(meta.read_text()), "path": str(meta.parent)})
    return found


def previous_serving_model(root: Path, ds: str, train: dict[str, Any]) -> Optional[Path]:
    """The newest finished serving model of a night before ``ds`` trained with the same recipe, or None."""
    recipe = pinned_train(train)
    candidates = [m for m in finished_models(root) if m.get("role", SERVING) == SERVING and
                  m.get("ds", "") < ds and pinned_train(m["train"]) == recipe]
    if not candidates:
        return None
    return Path(max(candidates, key=lambda m: (m["ds"], m["path"]))["path"])


def warm_start(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy the previous night's weights into ``module``: equal shapes whole, grown embeddings by their
    first rows (ids are stable, so row i is the same user or item); new rows keep their fresh init.
    Parameters only: buffers (side features, history) are tonight's. Returns how many were copied."""
    copied = 0
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            old = state.get(name)
            if old is None or old.shape[1:] != tensor.shape[1:] or old.dim() == 0:
                continue
            rows = min(len(old), len(tensor))
            tensor[:rows].copy_(old[:rows])
            copied += 1
    return copied


def checkpoint_paths(model_dir: str | Path) -> list[Path]:
    """The model's epoch checkpoints, oldest first."""
    return sorted((Path(model_dir) / CHECKPOINT_DIR).glob("epoch-*.pt"))


def save_checkpoint(model_dir: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write ``checkpoints/epoch-NNNN.pt`` atomically and keep only the newest few."""
    folder = model_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{epoch:04d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))  # a kill mid-write leaves the previous one intact
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
    atomic_write(path, lambda tmp: torch.save({
        "kind": "two_tower" if isinstance(model, TwoTower) else "mf",
        "n_users": model.user.num_embeddings,
        "n_items": model.item.num_embeddings,
        "dim": model.user.embedding_dim,
        "state_dict": model.state_dict(),
        "history": model.history_state() if model.has_history else None,
        "rating_head": head.state_dict() if head is not None else None,
        "train": train,
    }, tmp))


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
    atomic_write(model_dir / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))


def latest_model_dir(cfg: Config) -> Path:
    """The directory of the last model that finished training (``models/LATEST``)."""
    root = models_root(cfg)
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        raise FileNotFoundError(f"no trained model under {root}: run the train job first")
    name = pointer.read_text().strip()
    if not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"{pointer} holds {name!r}, not the name of a model folder under {root}")
    return root / name


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
        if current == model_dir:
            return True
        if trained_ds(current) > ds:
            log.info("LATEST stays at %s (ds %s): %s is for the earlier ds %s",
                     current.name, trained_ds(current), model_dir.name, ds)
            return False
    atomic_write(pointer, lambda tmp: tmp.write_text(model_dir.name))
    return True
