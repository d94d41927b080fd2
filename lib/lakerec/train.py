"""The train job (driver side): pin the night's inputs, write ``inputs.json``, launch the DDP workers.

Each night trains a serving model (all history as of ``ds``, warm-started from the previous night's
when ``nightly.warm_start``) and, when due, a backtest model (the train split). ``prepare`` pins the
examples version of the night's manifest and writes ``models/.<model_version>.partial/inputs.json``
with the parquet files of that version; ``launch`` runs :func:`lakerec.trainer.train_worker` on
``train.num_processes`` ranks with ``train.launcher`` (torch_distributor or torchrun), the night's models
in turn in one launch, restarting a failed worker group; on a cluster TorchDistributor runs the ranks on
the executors (``train.ranks_on``). With ``--set train.launcher=none`` only ``inputs.json`` is written;
then run torchrun yourself (commands in :mod:`lakerec.trainer`):
    torchrun --standalone --nproc_per_node=2 -m lakerec.train --inputs models/.<model_version>.partial/inputs.json
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from lakerec import faults, lifeline, model_store, validation
from lakerec.config import Config, resolve_path
from lakerec.data import count_rows
from lakerec.model_store import BACKTEST, INPUTS_FILE, META_FILE, SERVING, TrainInputs, model_version, resolved_train
from lakerec.trainer import train_worker

if TYPE_CHECKING:  # the driver's imports: a worker on a GPU node has no Spark
    from pyspark.sql import SparkSession

    from lakerec import snapshot

log = logging.getLogger(__name__)

def training_rating_mean(spark: "SparkSession", cfg: Config, examples_table, table_version: int) -> Optional[float]:
    """Mean rating of the training examples, or None (rating head off) when they cannot train one.

    The head needs every rated train interaction: with ``features.positive_threshold`` set the
    examples hold positives only, and implicit sources have no ratings at all.
    """
    from pyspark.sql import functions as F

    from lakerec import tables

    if cfg.features.positive_threshold is not None:
        log.info("rating head off: features.positive_threshold keeps only positives in the training examples")
        return None
    examples = tables.read(spark, cfg, examples_table, table_version)
    mean = examples.agg(F.avg("rating")).first()[0]
    if mean is None:
        log.info("rating head off: the training examples carry no ratings")
    return mean


def _pinned_files(spark: "SparkSession", cfg: Config, table, table_version: int) -> list[str]:
    """The parquet files of the examples ``table`` at ``table_version``, by ``train.data_path``."""
    from lakerec import tables
    from lakerec.data import active_files, spark_converter

    path = table.path(cfg)
    if cfg.train.data_path == "spark_converter":
        columns = [f.name for f in tables.TRAINING_EXAMPLES.schema.fields]
        converter = spark_converter(spark, path, table_version, columns, resolve_path(cfg.train.petastorm_cache_dir))
        return sorted(converter.file_urls)
    return active_files(spark, path, table_version)


def _write_side_features(spark: "SparkSession", cfg: Config, snap: "snapshot.Snapshot", examples, n_users: int,
                         n_items: int, model_dir: Path) -> Path:
    """two_tower: user and item side features, and which items have training examples."""
    from lakerec.features import side_features

    user_side, item_side = side_features(spark, cfg, n_users, n_items, snap)
    trained = np.zeros(n_items, np.bool_)
    trained[[r["item_idx"] for r in examples.select("item_idx").distinct().collect()]] = True
    path = model_dir / model_store.SIDE_FEATURES_FILE
    np.savez(path, user_side=user_side, item_side=item_side, trained_items=trained)
    return path


def _train_config(cfg: Config, warm: Optional[Path]) -> dict:
    """What the workers train with: ``nightly.warm_epochs`` on a warm-started night."""
    train = asdict(resolved_train(cfg))
    if warm is not None:
        train["epochs"] = cfg.nightly.warm_epochs
    return train


def prepare(spark: "SparkSession", cfg: Config, ds: str, role: str, snap: "snapshot.Snapshot") -> TrainInputs:
    """Pin the night's snapshot and write ``inputs.json`` (and its side files) for the workers."""
    from lakerec import snapshot, tables

    examples = snapshot.examples_table(role)
    versions = {t.qualified: snap.version(t) for t in (examples, tables.ID_MAP_USERS, tables.ID_MAP_ITEMS,
                                                       tables.SILVER_INTERACTIONS)}
    table_version = snap.version(examples)
    files = _pinned_files(spark, cfg, examples, table_version)
    n_users = snap.read(spark, cfg, tables.ID_MAP_USERS).count()
    n_items = snap.read(spark, cfg, tables.ID_MAP_ITEMS).count()
    version = model_version(cfg, ds, role, table_version)
    root = model_store.models_root(cfg)
    warm = None
    if role == SERVING and cfg.nightly.warm_start:
        warm = model_store.previous_serving_model(root, ds, asdict(resolved_train(cfg)))
    model_dir = model_store.partial_dir(root, version)
    model_dir.mkdir(parents=True, exist_ok=True)
    side_path = val_path = None
    if cfg.train.model == "two_tower":
        side_path = _write_side_features(spark, cfg, snap, snap.read(spark, cfg, examples), n_users, n_items, model_dir)
    val = validation.export(snap.read(spark, cfg, tables.SILVER_INTERACTIONS), cfg.train.validation_users,
                            n_users, n_items) if role == BACKTEST else None
    if val is not None:
        val_path = model_dir / model_store.VALIDATION_FILE
        val.save(val_path)
    inputs = TrainInputs(
        model_version=version, model_dir=str(model_dir), files=files, table_version=table_version,
        total_rows=count_rows(files), n_users=n_users, n_items=n_items, input_versions=versions,
        train=_train_config(cfg, warm),
        side_features=str(side_path) if side_path else None,
        validation=str(val_path) if val_path else None,
        rating_mean=(training_rating_mean(spark, cfg, examples, table_version)
                     if cfg.train.rating_weight > 0 else None),
        ds=ds, role=role, warm_start=str(warm / model_store.MODEL_FILE) if warm else None,
    )
    inputs.save(model_dir / INPUTS_FILE)
    return inputs


@dataclass(frozen=True)
class Placement:
    """Where TorchDistributor runs the ranks (barrier tasks on the executors, or this node) and whether each takes a GPU."""

    on_executors: bool = False
    use_gpu: bool = False

    @classmethod
    def of(cls, spark: "SparkSession", cfg: Config) -> "Placement":
        """``train.ranks_on`` resolved; an executor's GPU is its to claim (``spark.task.resource.gpu.amount``)."""
        on_executors = cfg.train.launcher == "torch_distributor" and (
            cfg.train.ranks_on == "executors"
            or (cfg.train.ranks_on == "auto" and not spark.sparkContext.master.startswith("local")))
        if on_executors:
            return cls(True, float(spark.conf.get("spark.task.resource.gpu.amount", "0")) > 0)
        return cls(False, torch.cuda.is_available())


def launch(cfg: Config, inputs_paths: list[Path], place: Optional[Placement] = None) -> None:
    """Run ``train_worker`` on ``train.num_processes`` ranks with the configured launcher, for each model of
    ``inputs_paths`` in turn: on this node, or as barrier tasks on the executors (``place``); ``in_process``:
    one rank, in this process. One launch for a night's models: starting the ranks costs more than a small
    model's training (about 15 s on 2 CPU cores, BENCHMARKS.md "CI time").

    A failed worker group is started again, fresh, up to ``train.max_restarts`` times, with the models
    it had not finished (no ``meta.json`` in their final folder); it resumes from their last checkpoint.
    torchrun's own ``--max-restarts`` is not used: its restarted gloo ranks could hang connecting to each
    other (seen here under load), a fresh torchrun does not.
    """
    n, restarts = cfg.train.num_processes, cfg.train.max_restarts
    metas = {}
    for path in inputs_paths:
        inputs = TrainInputs.load(path)
        metas[path] = Path(inputs.model_dir).parent / inputs.model_version / META_FILE
    lifeline.mark_launcher()  # the ranks exit should this process die
    for attempt in range(restarts + 1):
        pending = [str(path) for path in inputs_paths if not metas[path].is_file()]
        if not pending:  # the failure came after every model was finished
            return
        try:
            if cfg.train.launcher == "in_process":
                train_worker(pending, attempt)
            elif cfg.train.launcher == "torchrun":
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                       "-m", "lakerec.train", "--inputs", *pending, "--restarts", str(attempt)]
                subprocess.run(cmd, check=True)
            else:
                from pyspark.ml.torch.distributor import TorchDistributor

                place = place or Placement(False, torch.cuda.is_available())
                TorchDistributor(num_processes=n, local_mode=not place.on_executors, use_gpu=place.use_gpu).run(
                    train_worker, pending, attempt)
            return
        except Exception:
            if attempt == restarts:
                raise
            log.warning("training attempt %d of %d failed; starting again from the last checkpoint",
                        attempt + 1, restarts + 1, exc_info=True)


def train_models(spark: "SparkSession", cfg: Config, ds: str, roles: list[str], snap: "snapshot.Snapshot") -> dict:
    """Train each role's model for ``ds`` on the night's snapshot, in one launch; returns each one's
    meta.json contents by role.

    A model version that already has ``meta.json`` is finished and never rewritten: a rerun returns
    it (and moves ``LATEST`` forward to a serving model, should a crash have come in between). With
    ``train.launcher=none`` only ``inputs.json`` is written: returns its path and model_version.
    """
    from lakerec import snapshot

    versions = {role: model_version(cfg, ds, role, snap.version(snapshot.examples_table(role))) for role in roles}
    with ExitStack() as locks:
        for version in versions.values():
            locks.enter_context(model_store.lock(model_store.models_root(cfg), version))
        return _train_locked(spark, cfg, ds, versions, snap)


def _train_locked(spark: "SparkSession", cfg: Config, ds: str, versions: dict[str, str],
                  snap: "snapshot.Snapshot") -> dict:
    """:func:`train_models` while this run holds each model version's lock."""
    root = model_store.models_root(cfg)
    metas, pending = {}, {}
    for role, version in versions.items():
        finished = root / version
        if (finished / META_FILE).is_file():
            log.info("%s is already trained: not retraining it (a finished model is never trained again)", version)
            model_store.redact_inputs(finished)
            if role == SERVING:
                model_store.publish_latest(finished, ds)
            metas[role] = json.loads((finished / META_FILE).read_text())
        else:
            pending[role] = Path(prepare(spark, cfg, ds, role, snap).model_dir) / INPUTS_FILE
    if cfg.train.launcher == "none":
        if pending:
            log.info("wrote %s: run torchrun -m lakerec.train --inputs with them", " ".join(map(str, pending.values())))
        return {role: metas.get(role) or {"model_version": versions[role], "inputs": str(pending[role])}
                for role in versions}
    if pending:
        launch(cfg, list(pending.values()), Placement.of(spark, cfg))
    for role in pending:
        meta_path = root / versions[role] / META_FILE
        if not meta_path.is_file():  # the launcher returns whichever rank ended last: check rank 0's output
            raise RuntimeError(f"training finished without rank 0 writing {meta_path}")
        metas[role] = json.loads(meta_path.read_text())
        log.info("trained %s in %.1fs, final loss %.4f", versions[role], metas[role]["train_seconds"],
                 metas[role]["final_loss"])
    return {role: metas[role] for role in versions}


@faults.job("train")
def run(spark: "SparkSession", cfg: Config, ds: str) -> dict:
    """Train ``ds``'s models: the backtest model when due (``nightly.backtest_every``), then the
    serving model. Returns each one's meta.json contents by role."""
    from lakerec import snapshot

    snap = snapshot.Snapshot.load(spark, cfg, ds)
    return train_models(spark, cfg, ds, ([BACKTEST] if snapshot.backtest_due(cfg, ds) else []) + [SERVING], snap)


def main() -> None:
    parser = argparse.ArgumentParser(description="lakerec DDP training worker (run under torchrun)")
    parser.add_argument("--inputs", required=True, nargs="+", help="inputs.json written by the train job's prepare "
                                                                    "step, one per model, trained in turn")
    parser.add_argument("--restarts", type=int, default=0, help="how many times the launcher started the ranks again")
    args = parser.parse_args()
    train_worker(args.inputs, args.restarts)


if __name__ == "__main__":
    main()
