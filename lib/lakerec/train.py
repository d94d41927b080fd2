"""Distributed trainer: Petastorm shards of features.training_examples -> torch DDP -> models/<version>/.

The driver (``run``) pins the table version, writes ``inputs.json`` with the parquet files of that
version and launches the workers; each worker (``train_worker``) needs torch, pyarrow and petastorm
only (no JVM, no Spark), reads its shard every epoch, and rank 0 writes a checkpoint after every
epoch. A restarted run resumes from the newest checkpoint of the same inputs.

The train job (``jobs/train.py``) prepares and launches with ``train.launcher`` (torch_distributor or
torchrun). With ``--set train.launcher=none`` it only writes ``inputs.json``; then launch yourself.
One node, 2 CPU processes (gloo) or one process per GPU (nccl, bf16 autocast):
    torchrun --standalone --nproc_per_node=2 -m lakerec.train --inputs models/<model_version>/inputs.json
Several nodes (inputs.json and the model dir on storage every node sees; run on every node):
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=lakerec-$DS --rdzv_backend=c10d \
        --rdzv_endpoint=$HEAD_NODE:29500 -m lakerec.train --inputs /shared/models/<model_version>/inputs.json
Single process (debugging): python -m lakerec.train --inputs models/<model_version>/inputs.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lakerec.config import Config, TrainConfig, resolve_path
from lakerec.data import ShortEpochError, count_rows, iterate_batches, read_columns
from lakerec import validation
from lakerec.tracking import Tracker
from lakerec.models import FactorModel, MatrixFactorization, Objective, RatingHead, RatingPredictor, TwoTower

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

FACTORS_FILE = "factors.npz"
INPUTS_FILE = "inputs.json"
META_FILE = "meta.json"
LATEST_FILE = "LATEST"
SIDE_FEATURES_FILE = "side_features.npz"
RATING_HEAD_FILE = "rating_head.npz"
VALIDATION_FILE = "validation.npz"
BEST_FILE = "best.pt"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINTS_KEPT = 2
TRAIN_COLUMNS = ["user_idx", "item_idx"]
DEFAULT_RECENCY_DECAY = 2.0  # train.recency_decay for splits that hold out the future (BENCHMARKS.md "Quality")
DEFAULT_HISTORY_DECAY = 5.0  # train.history_decay for the same splits (BENCHMARKS.md "Quality")
# Config keys that may change between a run and its resumption without invalidating checkpoints.
RESTARTS_ENV = "LAKEREC_TRAIN_RESTARTS"  # how many times launch() restarted this worker group
_RESUMABLE_KEYS = {"epochs", "resume", "launcher", "num_processes", "max_restarts",
                   "mlflow", "mlflow_tracking_uri", "mlflow_experiment"}


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

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainInputs":
        return cls(**json.loads(Path(path).read_text()))

    def fingerprint(self, world_size: int) -> str:
        """What a checkpoint must match to be resumed: data, sizes, training config and world size."""
        train = {k: v for k, v in self.train.items() if k not in _RESUMABLE_KEYS}
        pinned = [self.files, self.table_version, self.total_rows, self.n_users, self.n_items, train, world_size]
        return hashlib.sha256(json.dumps(pinned, sort_keys=True).encode()).hexdigest()


def _model_version(cfg: Config, ds: str, table_version: int) -> str:
    """``<model>-<ds>-t<table version>-<config digest>``: another training config for the same day
    gets its own folder, so training it never touches the model ``LATEST`` points to. The keys a
    run may change and still resume (epochs, launcher, ...) are left out, as for checkpoints."""
    train = {k: v for k, v in asdict(resolved_train(cfg)).items() if k not in _RESUMABLE_KEYS}
    digest = hashlib.sha256(json.dumps(train, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.train.model.replace('_', '')}-{ds}-t{table_version}-{digest}"


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def checkpoint_paths(model_dir: str | Path) -> list[Path]:
    """The model's epoch checkpoints, oldest first."""
    return sorted((Path(model_dir) / CHECKPOINT_DIR).glob("epoch-*.pt"))


def _save_checkpoint(model_dir: Path, epoch: int, state: dict[str, Any]) -> Path:
    folder = model_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{epoch:04d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint intact
    for old in checkpoint_paths(model_dir)[:-CHECKPOINTS_KEPT]:
        old.unlink()
    return path


def _load_checkpoint(model_dir: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    """The newest checkpoint, on the CPU: the RNG states must stay CPU byte tensors, and
    ``load_state_dict`` moves the weights and the optimizer's moments to the model's device."""
    paths = checkpoint_paths(model_dir)
    if not paths:
        return None
    state = torch.load(paths[-1], map_location="cpu")
    if state["fingerprint"] != fingerprint:
        log.warning("ignoring %s: it was trained on other inputs, config or world size", paths[-1])
        return None
    return state


def learning_rate(tc: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch``: a function of the epoch alone, so a resumed run matches."""
    if tc.lr_schedule == "constant":
        return tc.lr
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / tc.epochs))


def _autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on GPU; full precision on CPU (where bf16 is slower and changes the results)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _gather(value: Any, distributed: bool, world_size: int) -> list[Any]:
    if not distributed:
        return [value]
    values: list[Any] = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def _in_lockstep(
    batches: Iterator[dict[str, torch.Tensor]], distributed: bool, device: torch.device
) -> Iterator[Optional[dict[str, torch.Tensor]]]:
    """This rank's batches, then ``None`` until every rank's shard is done.

    Shards differ in size by whole row groups. DDP's join() would let a finished rank skip its
    optimizer steps, so Adam's moments would differ between ranks (and from a resumed run); here
    every rank steps every time, a finished one with a zero gradient.
    """
    while True:
        batch = next(batches, None)
        if not distributed:
            if batch is None:
                return
            yield batch
            continue
        busy = torch.tensor([batch is not None], dtype=torch.int32, device=device)
        dist.all_reduce(busy)
        if not busy.item():
            return
        yield batch


def build_model(inputs: TrainInputs, tc: TrainConfig) -> torch.nn.Module:
    """The configured model, sized by the pinned inputs."""
    if tc.model == "mf":
        return MatrixFactorization(inputs.n_users, inputs.n_items, tc.dim)
    if not inputs.side_features:
        raise ValueError("train.model=two_tower needs side features: inputs.json has none (written by train.prepare)")
    with np.load(inputs.side_features) as side:
        user_side, item_side = torch.from_numpy(side["user_side"]), torch.from_numpy(side["item_side"])
    return TwoTower(inputs.n_users, inputs.n_items, tc.dim, user_side, item_side, tc.hidden, tc.id_dropout)


def build_rating_head(inputs: TrainInputs, tc: TrainConfig) -> Optional[RatingHead]:
    """The multi-task rating head, when configured and the examples carry ratings."""
    if tc.rating_weight <= 0 or inputs.rating_mean is None:
        return None
    return RatingHead(inputs.n_users, inputs.n_items, tc.dim, inputs.rating_mean)


def load_history(model: MatrixFactorization, files: list[str], decay: float) -> None:
    """Give ``model`` every user's training items (all files: not only this rank's shard).

    Weights exp(decay x (recency - 1)); with decay 0 a plain mean, which needs no recency column
    (tables written before it existed train too).
    """
    past = read_columns(files, ["user_idx", "item_idx"] + (["recency"] if decay > 0 else []))
    owners, items = torch.from_numpy(past["user_idx"]).long(), torch.from_numpy(past["item_idx"]).long()
    weights = torch.exp(decay * (torch.from_numpy(past["recency"]).float() - 1.0)) if decay > 0 else torch.ones(len(owners))
    model.set_history(owners, items, weights)


def export_factors(model: torch.nn.Module, inputs: TrainInputs) -> FactorModel:
    """The trained model in the scorer's factor form (two_tower: cold items keep content only)."""
    if not isinstance(model, TwoTower):
        return FactorModel.from_mf(model)
    with np.load(inputs.side_features) as side:
        trained_items = torch.from_numpy(side["trained_items"])
    factors = FactorModel.from_two_tower(model, trained_items)
    model.train()
    return factors


def train_worker(inputs_path: str) -> None:
    """One DDP rank: resume or start, train on this rank's Petastorm shard each epoch, rank 0 writes."""
    inputs = TrainInputs.load(inputs_path)
    tc = TrainConfig(**inputs.train)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    distributed = world_size > 1
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # Ranks on one node share its cores; more threads per rank only contend.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    if distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("petastorm").setLevel(logging.WARNING)
    model_dir = Path(inputs.model_dir)
    fingerprint = inputs.fingerprint(world_size)

    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = build_model(inputs, tc)
    weighted = (tc.recency_decay or 0.0) > 0
    history_weighted = tc.user_history and (tc.history_decay or 0.0) > 0
    if tc.user_history:
        load_history(model, inputs.files, tc.history_decay if history_weighted else 0.0)
    model = model.to(device)
    head = build_rating_head(inputs, tc)
    objective = Objective(model, head, tc.rating_weight).to(device)
    columns = TRAIN_COLUMNS + (["rating"] if head is not None else []) + (["recency"] if weighted or history_weighted else [])
    optimizer = torch.optim.Adam(objective.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    negatives = torch.Generator().manual_seed(tc.seed * 1009 + rank)
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, {"loss": float("inf"), "ndcg": -1.0, "epoch": -1}
    val = validation.ValidationSet.load(inputs.validation) if inputs.validation and rank == 0 else None

    state = _load_checkpoint(model_dir, fingerprint) if tc.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        if head is not None:
            head.load_state_dict(state["rating_head"])
        optimizer.load_state_dict(state["optimizer"])
        negatives.set_state(state["negatives"][rank])
        torch.set_rng_state(state["torch_rng"][rank])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        if inputs.validation and state["epoch"] - best["epoch"] >= tc.patience:
            start_epoch = tc.epochs  # that epoch had stopped early: publish, as the killed run would have
        if rank == 0:
            log.info("resuming %s after epoch %d", inputs.model_version, state["epoch"])
    tracker = None
    if rank == 0:
        params = {**inputs.train, "model_version": inputs.model_version, "table_version": inputs.table_version,
                  "n_users": inputs.n_users, "n_items": inputs.n_items, "world_size": world_size}
        tracker = Tracker(tc, inputs.model_version, state.get("mlflow_run_id") if state else None, params)
    if distributed:
        dist.barrier()  # every rank has read the checkpoint before rank 0 clears stale ones
    if state is None and rank == 0:
        shutil.rmtree(model_dir / CHECKPOINT_DIR, ignore_errors=True)
    # Side-feature buffers never change: do not re-broadcast them on every forward.
    ddp = DistributedDataParallel(objective, broadcast_buffers=False) if distributed else objective

    sampled = 0 < tc.softmax_negatives < inputs.n_items
    started = time.time()
    progress = tqdm(range(start_epoch, tc.epochs), desc="train", initial=start_epoch, total=tc.epochs,
                    disable=rank != 0)
    for epoch in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(tc, epoch)
        rows, steps = 0, 0
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss and MSE x rows, summed on the device
        epoch_started = time.time()
        batches = iterate_batches(
            inputs.files, tc.batch_size, columns, rank, world_size,
            epoch=epoch, seed=tc.seed, workers=tc.reader_workers, shuffle_buffer=tc.shuffle_buffer,
        )
        for batch in _in_lockstep(batches, distributed, device):
            ratings = weights = history_weights = None
            if batch is None:  # this rank's shard is done: contribute a zero gradient
                users = pos = torch.zeros(1, dtype=torch.long, device=device)
                history_weights = torch.zeros(1, device=device)  # leave nothing out of user 0's history
                if head is not None:
                    ratings = torch.full((1,), float("nan"), device=device)
            else:
                users = batch["user_idx"].long().to(device)
                pos = batch["item_idx"].long().to(device)
                if head is not None:
                    ratings = batch["rating"].float().to(device)
                if weighted:
                    weights = torch.exp(tc.recency_decay * (batch["recency"].float().to(device) - 1.0))
                if history_weighted:
                    history_weights = torch.exp(tc.history_decay * (batch["recency"].float().to(device) - 1.0))
            with _autocast(device):
                if tc.loss == "bpr":
                    neg = torch.randint(0, inputs.n_items, pos.shape, generator=negatives).to(device)
                    loss, mse = ddp(users, pos, "bpr", neg, l2=tc.l2, ratings=ratings, weights=weights,
                                    history_weights=history_weights)
                elif sampled:
                    shared = torch.randint(0, inputs.n_items, (tc.softmax_negatives,), generator=negatives).to(device)
                    loss, mse = ddp(users, pos, "softmax", shared, inputs.n_items, ratings=ratings, weights=weights,
                                    history_weights=history_weights)
                else:
                    loss, mse = ddp(users, pos, "softmax", ratings=ratings, weights=weights, history_weights=history_weights)
            optimizer.zero_grad(set_to_none=True)
            (loss if batch is not None else loss * 0.0).backward()
            optimizer.step()
            steps += 1
            if batch is not None:  # no .item() here: a GPU would wait for every step before loading the next
                rows += len(users)
                sums += torch.stack([loss.detach(), mse.detach()]).double() * len(users)
        totals = torch.cat([torch.tensor([rows], dtype=torch.float64, device=device), sums])
        if distributed:
            dist.all_reduce(totals)
        if int(totals[0]) != inputs.total_rows:
            raise ShortEpochError(
                f"epoch {epoch}: ranks read {int(totals[0])} rows, table version {inputs.table_version} "
                f"has {inputs.total_rows}"
            )
        loss_epoch = float(totals[1] / totals[0])
        # Every rank's sampler state and row count, so a resumed run continues each rank exactly.
        per_rank = _gather({"negatives": negatives.get_state(), "torch_rng": torch.get_rng_state(), "rows": rows},
                           distributed, world_size)
        # steps and seconds (data + compute, before validation) give the step time per rank.
        history.append({"epoch": epoch, "loss": loss_epoch, "rows": int(totals[0]),
                        "rank_rows": [r["rows"] for r in per_rank], "steps": steps,
                        "seconds": round(time.time() - epoch_started, 3)})
        if head is not None:
            history[-1]["rating_rmse"] = math.sqrt(float(totals[2] / totals[0]))
        stop = torch.zeros(1, device=device)
        if val is not None:
            history[-1]["val_ndcg"] = validation.ndcg(export_factors(model, inputs), val)
            if history[-1]["val_ndcg"] > best["ndcg"]:
                best = {"loss": loss_epoch, "ndcg": history[-1]["val_ndcg"], "epoch": epoch}
                torch.save(objective.state_dict(), model_dir / BEST_FILE)
            stop[0] = float(epoch - best["epoch"] >= tc.patience)
        elif inputs.validation is None and loss_epoch < best["loss"]:
            best = {"loss": loss_epoch, "ndcg": -1.0, "epoch": epoch}
        if rank == 0:
            path = _save_checkpoint(model_dir, epoch, {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rating_head": head.state_dict() if head is not None else None,
                "negatives": [r["negatives"] for r in per_rank], "torch_rng": [r["torch_rng"] for r in per_rank],
                "history": history, "best": best,
                "train": inputs.train, "table_version": inputs.table_version, "fingerprint": fingerprint,
                "mlflow_run_id": tracker.run_id,
            })
            tracker.log_epoch(epoch, {k: history[-1][k] for k in ("loss", "val_ndcg", "rating_rmse") if k in history[-1]})
            progress.set_postfix(loss=f"{loss_epoch:.4f}")
            log.info("epoch %d: loss %.4f%s over %d rows, checkpoint %s", epoch, loss_epoch,
                     f", validation ndcg@10 {history[-1]['val_ndcg']:.4f}" if val is not None else "",
                     int(totals[0]), path.name)
        if distributed and inputs.validation:
            dist.broadcast(stop, 0)  # every rank stops at the same epoch
        if stop.item():
            if rank == 0:
                log.info("early stop after epoch %d: best validation ndcg@10 %.4f at epoch %d", epoch, best["ndcg"], best["epoch"])
            break

    digests = _gather(_weights_digest(model), distributed, world_size)
    if rank == 0:
        if val is not None:  # publish the best validation epoch, not the last one
            objective.load_state_dict(torch.load(model_dir / BEST_FILE, map_location=device))
        export_factors(model, inputs).save(model_dir / FACTORS_FILE)
        if head is not None:
            RatingPredictor.from_head(head).save(model_dir / RATING_HEAD_FILE)
        else:
            (model_dir / RATING_HEAD_FILE).unlink(missing_ok=True)
        torch.save({"state_dict": model.state_dict(), "n_users": inputs.n_users, "n_items": inputs.n_items,
                    "rating_head": head.state_dict() if head is not None else None,
                    "train": inputs.train}, model_dir / "model.pt")
        meta = {
            "model_version": inputs.model_version,
            "world_size": world_size,
            "device": str(device),
            "table_version": inputs.table_version,
            "input_versions": inputs.input_versions,
            "train": inputs.train,
            "history": history,
            "final_loss": history[-1]["loss"],
            "best": best,
            "resumed_from_epoch": start_epoch if state is not None else None,
            "restarts": int(os.environ.get(RESTARTS_ENV, 0)),
            "train_seconds": round(time.time() - started, 2),
            "weights_sha256": digests[0],
            "rank_weights_sha256": digests,
            "mlflow_run_id": tracker.run_id,
        }
        (model_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        tracker.finish(model_dir, {"final_loss": meta["final_loss"], "train_seconds": meta["train_seconds"],
                                   **({"best_val_ndcg": best["ndcg"]} if val is not None else {})})
        _publish_latest(model_dir)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


def training_rating_mean(spark: "SparkSession", cfg: Config, table_version: int) -> Optional[float]:
    """Mean rating of the training examples, or None (rating head off) when they cannot train one.

    The head needs every rated train interaction: with ``features.positive_threshold`` set the
    examples hold positives only, and implicit sources have no ratings at all.
    """
    from pyspark.sql import functions as F

    from lakerec import tables

    if cfg.features.positive_threshold is not None:
        log.info("rating head off: features.positive_threshold keeps only positives in the training examples")
        return None
    examples = tables.read(spark, cfg, tables.TRAINING_EXAMPLES, table_version)
    mean = examples.agg(F.avg("rating")).first()[0]
    if mean is None:
        log.info("rating head off: the training examples carry no ratings")
    return mean


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


def prepare(spark: "SparkSession", cfg: Config, ds: str) -> TrainInputs:
    """Pin the input table versions and write ``inputs.json`` for the workers."""
    from lakerec import tables
    from lakerec.data import active_files, spark_converter

    versions = {
        t.qualified: tables.version(spark, cfg, t)
        for t in (tables.TRAINING_EXAMPLES, tables.ID_MAP_USERS, tables.ID_MAP_ITEMS, tables.SILVER_INTERACTIONS)
    }
    table_version = versions[tables.TRAINING_EXAMPLES.qualified]
    path = tables.TRAINING_EXAMPLES.path(cfg)
    if cfg.train.data_path == "spark_converter":
        columns = [f.name for f in tables.TRAINING_EXAMPLES.schema.fields]
        converter = spark_converter(spark, path, table_version, columns, resolve_path(cfg.train.petastorm_cache_dir))
        files = sorted(converter.file_urls)
    else:
        files = active_files(spark, path, table_version)
    n_users = tables.read(spark, cfg, tables.ID_MAP_USERS, versions[tables.ID_MAP_USERS.qualified]).count()
    n_items = tables.read(spark, cfg, tables.ID_MAP_ITEMS, versions[tables.ID_MAP_ITEMS.qualified]).count()
    model_version = _model_version(cfg, ds, table_version)
    model_dir = Path(resolve_path(cfg.models_dir)) / model_version
    model_dir.mkdir(parents=True, exist_ok=True)
    side_path = val_path = None
    if cfg.train.model == "two_tower":
        from lakerec.features import side_features

        user_side, item_side = side_features(spark, cfg, n_users, n_items)
        trained = np.zeros(n_items, np.bool_)
        examples = tables.read(spark, cfg, tables.TRAINING_EXAMPLES, table_version)
        trained[[r["item_idx"] for r in examples.select("item_idx").distinct().collect()]] = True
        side_path = model_dir / SIDE_FEATURES_FILE
        np.savez(side_path, user_side=user_side, item_side=item_side, trained_items=trained)
    rating_mean = None
    if cfg.train.rating_weight > 0:
        rating_mean = training_rating_mean(spark, cfg, table_version)
    val = validation.export(spark, cfg, cfg.train.validation_users, n_users, n_items)
    if val is not None:
        val_path = model_dir / VALIDATION_FILE
        val.save(val_path)
    inputs = TrainInputs(
        model_version=model_version,
        model_dir=str(model_dir),
        files=files,
        table_version=table_version,
        total_rows=count_rows(files),
        n_users=n_users,
        n_items=n_items,
        input_versions=versions,
        train=asdict(resolved_train(cfg)),
        side_features=str(side_path) if side_path else None,
        validation=str(val_path) if val_path else None,
        rating_mean=rating_mean,
    )
    inputs.save(model_dir / INPUTS_FILE)
    return inputs


def launch(cfg: Config, inputs_path: Path) -> None:
    """Run ``train_worker`` on ``train.num_processes`` ranks of this node with the configured launcher.

    A failed worker group is started again, fresh, up to ``train.max_restarts`` times; it resumes
    from its last checkpoint. torchrun's own ``--max-restarts`` is not used: its restarted gloo
    ranks could hang connecting to each other (seen here under load), a fresh torchrun does not.
    """
    n, restarts = cfg.train.num_processes, cfg.train.max_restarts
    for attempt in range(restarts + 1):
        os.environ[RESTARTS_ENV] = str(attempt)  # recorded in meta.json by rank 0
        try:
            if cfg.train.launcher == "torchrun":
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                       "-m", "lakerec.train", "--inputs", str(inputs_path)]
                subprocess.run(cmd, check=True)
            else:
                from pyspark.ml.torch.distributor import TorchDistributor

                TorchDistributor(num_processes=n, local_mode=True, use_gpu=torch.cuda.is_available()).run(
                    train_worker, str(inputs_path))
            return
        except Exception:
            if attempt == restarts:
                raise
            log.warning("training attempt %d of %d failed; starting again from the last checkpoint",
                        attempt + 1, restarts + 1, exc_info=True)
        finally:
            os.environ.pop(RESTARTS_ENV, None)


def latest_model_dir(cfg: Config) -> Path:
    """The directory of the last model that finished training (``models/LATEST``)."""
    root = Path(resolve_path(cfg.models_dir))
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        raise FileNotFoundError(f"no trained model under {root}: run the train job first")
    return root / pointer.read_text().strip()


def _publish_latest(model_dir: Path) -> None:
    """Point ``models/LATEST`` at ``model_dir`` (rank 0, after meta.json is written)."""
    pointer = model_dir.parent / LATEST_FILE
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(model_dir.name)
    os.replace(tmp, pointer)  # atomic: scorers never read a half-written pointer


def run(spark: "SparkSession", cfg: Config, ds: str) -> dict:
    """Train on the current feature tables; returns the model's meta.json contents.

    With ``train.launcher=none`` only ``inputs.json`` is written: returns its path and model_version.
    """
    inputs = prepare(spark, cfg, ds)
    model_dir = Path(inputs.model_dir)
    if cfg.train.launcher == "none":
        log.info("wrote %s: launch torchrun -m lakerec.train --inputs with it", model_dir / INPUTS_FILE)
        return {"model_version": inputs.model_version, "inputs": str(model_dir / INPUTS_FILE)}
    (model_dir / META_FILE).unlink(missing_ok=True)
    launch(cfg, model_dir / INPUTS_FILE)
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():  # the launcher returns whichever rank ended last: check rank 0's output
        raise RuntimeError(f"training finished without rank 0 writing {meta_path}")
    meta = json.loads(meta_path.read_text())
    log.info("trained %s in %.1fs, final loss %.4f", meta["model_version"], meta["train_seconds"], meta["final_loss"])
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description="lakerec DDP training worker (run under torchrun)")
    parser.add_argument("--inputs", required=True, help="inputs.json written by the train job's prepare step")
    train_worker(parser.parse_args().inputs)


if __name__ == "__main__":
    main()
