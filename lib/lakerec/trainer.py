"""The DDP training worker: one rank reads its Petastorm shard every epoch; rank 0 writes the model.

Needs torch, pyarrow and petastorm only (no JVM, no Spark), so it runs on GPU nodes. The loop reads top to
bottom (:func:`train_worker`): set up the rank; for each model, restore the newest checkpoint of the same inputs,
then per epoch run it and end it (reduce, validate, checkpoint, agree on early stopping), then publish the
model files, ``meta.json``, rename the folder and move ``models/LATEST``.

Launch commands (the train job does this for you; ``--set train.launcher=none`` leaves it to you):
    torchrun --standalone --nproc_per_node=2 -m lakerec.train --inputs models/.<model_version>.partial/inputs.json
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=lakerec-$DS --rdzv_backend=c10d \
        --rdzv_endpoint=$HEAD_NODE:29500 -m lakerec.train --inputs /shared/models/.<model_version>.partial/inputs.json
    python -m lakerec.train --inputs models/.<model_version>.partial/inputs.json    # one process, for debugging
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lakerec import faults, lifeline, model_store, redaction, validation
from lakerec.config import TrainConfig
from lakerec.data import ShortEpochError, iterate_batches, read_columns
from lakerec.model_store import TrainInputs
from lakerec.models import FactorModel, MatrixFactorization, Objective, RatingHead, RatingPredictor, TwoTower
from lakerec.tracking import Tracker

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["user_idx", "item_idx"]


def learning_rate(tc: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch``: a function of the epoch alone, so a resumed run matches."""
    if tc.lr_schedule == "constant":
        return tc.lr
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / tc.epochs))


def build_model(inputs: TrainInputs, tc: TrainConfig) -> MatrixFactorization:
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


def export_factors(model: MatrixFactorization, inputs: TrainInputs) -> FactorModel:
    """The trained model in the scorer's factor form (two_tower: cold items keep content only)."""
    if not isinstance(model, TwoTower):
        return FactorModel.from_mf(model)
    with np.load(inputs.side_features) as side:
        trained_items = torch.from_numpy(side["trained_items"])
    factors = FactorModel.from_two_tower(model, trained_items)
    model.train()
    return factors


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every weight: equal on every rank, and across a run and its resumption."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Rank:
    """Where this process sits in the worker group, from torchrun's environment."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def set_up_rank() -> Rank:
    """Device, threads, process group (gloo on CPU, nccl on GPU) and logging for this rank."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # Ranks on one node share its cores; more threads per rank only contend.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("petastorm").setLevel(logging.WARNING)
    return Rank(rank, world_size, device)


def _autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on GPU; full precision on CPU (where bf16 is slower and changes the results)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _in_lockstep(batches: Iterator[dict[str, torch.Tensor]], place: Rank) -> Iterator[Optional[dict[str, torch.Tensor]]]:
    """This rank's batches, then ``None`` until every rank's shard is done.

    Shards differ in size by whole row groups. DDP's join() would let a finished rank skip its
    optimizer steps, so Adam's moments would differ between ranks (and from a resumed run); here
    every rank steps every time, a finished one with a zero gradient.
    """
    while True:
        batch = next(batches, None)
        if place.distributed:
            busy = torch.tensor([batch is not None], dtype=torch.int32, device=place.device)
            dist.all_reduce(busy)
            if not busy.item():
                return
        elif batch is None:
            return
        yield batch


@dataclass
class EpochTotals:
    """One epoch summed over every rank (``rows``, ``loss_sum``, ``mse_sum``) and this rank's share."""

    rows: int
    loss_sum: float
    mse_sum: float
    rank_rows: int
    steps: int
    seconds: float


class Trainer:
    """One rank's model, optimizer and samplers, and the state that a checkpoint carries."""

    def __init__(self, inputs: TrainInputs, place: Rank, restarts: int = 0) -> None:
        self.inputs, self.place, self.tc = inputs, place, TrainConfig(**inputs.train)
        self.restarts = restarts
        self.model_dir = Path(inputs.model_dir)
        self.fingerprint = inputs.fingerprint(place.world_size)
        tc = self.tc
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = build_model(inputs, tc)
        self.weighted = (tc.recency_decay or 0.0) > 0
        self.history_weighted = tc.user_history and (tc.history_decay or 0.0) > 0
        if tc.user_history:
            load_history(self.model, inputs.files, tc.history_decay if self.history_weighted else 0.0)
        self.model = self.model.to(place.device)
        self.head = build_rating_head(inputs, tc)
        if inputs.warm_start:
            self._warm_start(inputs.warm_start)
        self.objective = Objective(self.model, self.head, tc.rating_weight).to(place.device)
        self.ddp: torch.nn.Module = self.objective
        self.optimizer = torch.optim.Adam(self.objective.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.negatives = torch.Generator().manual_seed(tc.seed * 1009 + place.rank)
        self.columns = TRAIN_COLUMNS + (["rating"] if self.head is not None else []) + (
            ["recency"] if self.weighted or self.history_weighted else [])
        self.sampled = 0 < tc.softmax_negatives < inputs.n_items
        self.val = validation.ValidationSet.load(inputs.validation) if inputs.validation and place.leader else None
        self.history: list[dict[str, Any]] = []
        self.best = {"loss": float("inf"), "ndcg": -1.0, "epoch": -1}
        self.start_epoch, self.resumed_from = 0, None
        self.tracker: Tracker
        self.progress: tqdm
        self.started = time.time()

    # ------------------------------------------------------------------ restore

    def restore(self) -> None:
        """Continue from the newest checkpoint of the same inputs, or start clean; then wrap in DDP."""
        state = model_store.load_checkpoint(self.model_dir, self.fingerprint) if self.tc.resume else None
        if state is not None:
            self._load_state(state)
        tc = self.tc if self.place.leader else replace(self.tc, mlflow=False)
        params = {**self.inputs.train, "model_version": self.inputs.model_version, "n_users": self.inputs.n_users,
                  "table_version": self.inputs.table_version, "n_items": self.inputs.n_items,
                  "world_size": self.place.world_size}
        self.tracker = Tracker(tc, self.inputs.model_version, state.get("mlflow_run_id") if state else None, params)
        self.place.barrier()  # every rank has read the checkpoint before rank 0 clears stale ones
        if state is None and self.place.leader:
            shutil.rmtree(self.model_dir / model_store.CHECKPOINT_DIR, ignore_errors=True)
        if self.place.distributed:  # buffers (side features, history) are the same on every rank and never change
            self.ddp = DistributedDataParallel(self.objective, forward_sync_buffers=False)

    def _warm_start(self, path: str) -> None:
        """Start from the previous night's serving model: its rows for the users and items it knew."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        copied = model_store.warm_start(self.model, saved["state_dict"])
        if self.head is not None and saved["rating_head"] is not None:
            copied += model_store.warm_start(self.head, saved["rating_head"])
        if self.place.leader:
            log.info("warm start from %s: %d tensors", path, copied)

    def _load_state(self, state: dict[str, Any]) -> None:
        rank = self.place.rank
        self.model.load_state_dict(state["model"])
        if self.head is not None:
            self.head.load_state_dict(state["rating_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.negatives.set_state(state["negatives"][rank])
        torch.set_rng_state(state["torch_rng"][rank])
        self.history, self.best = state["history"], state["best"]
        self.start_epoch = state["epoch"] + 1
        if self.inputs.validation and state["epoch"] - self.best["epoch"] >= self.tc.patience:
            self.start_epoch = self.tc.epochs  # that epoch had stopped early: publish, as the killed run would have
        self.resumed_from = self.start_epoch
        if self.place.leader:
            log.info("resuming %s after epoch %d", self.inputs.model_version, state["epoch"])

    # ------------------------------------------------------------------ one epoch

    def epochs(self) -> Iterator[int]:
        """The epochs still to train, with a progress bar on rank 0."""
        self.progress = tqdm(range(self.start_epoch, self.tc.epochs), desc="train", initial=self.start_epoch,
                             total=self.tc.epochs, disable=not self.place.leader)
        return iter(self.progress)

    def run_epoch(self, epoch: int) -> EpochTotals:
        """Train on this rank's shard once; every rank steps in lockstep until all shards are done."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.tc, epoch)
        rows, steps, started = 0, 0, time.time()
        sums = torch.zeros(2, dtype=torch.float64, device=self.place.device)  # loss and MSE x rows, on the device
        batches = iterate_batches(
            self.inputs.files, self.tc.batch_size, self.columns, self.place.rank, self.place.world_size,
            epoch=epoch, seed=self.tc.seed, workers=self.tc.reader_workers, shuffle_buffer=self.tc.shuffle_buffer,
        )
        for batch in _in_lockstep(batches, self.place):
            loss, mse, n = self._step(batch)
            steps += 1
            if n:  # no .item() here: a GPU would wait for every step before loading the next
                rows += n
                sums += torch.stack([loss, mse]).double() * n
        totals = torch.cat([torch.tensor([rows], dtype=torch.float64, device=self.place.device), sums])
        if self.place.distributed:
            dist.all_reduce(totals)
        if int(totals[0]) != self.inputs.total_rows:
            raise ShortEpochError(f"epoch {epoch}: ranks read {int(totals[0])} rows, table version "
                                  f"{self.inputs.table_version} has {self.inputs.total_rows}")
        return EpochTotals(int(totals[0]), float(totals[1]), float(totals[2]), rows, steps,
                           round(time.time() - started, 3))

    def _step(self, batch: Optional[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer step; a finished rank (``batch`` None) steps on a padding row with zero gradient."""
        users, pos, extra = self._tensors(batch)
        with _autocast(self.place.device):
            loss, mse = self._loss(users, pos, **extra)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if batch is not None else loss * 0.0).backward()
        self.optimizer.step()
        return loss.detach(), mse.detach(), 0 if batch is None else len(users)

    def _tensors(self, batch: Optional[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(users, positives, optional ratings and weights) on the device."""
        device, tc = self.place.device, self.tc
        extra: dict[str, Optional[torch.Tensor]] = {"ratings": None, "weights": None, "history_weights": None}
        if batch is None:
            users = pos = torch.zeros(1, dtype=torch.long, device=device)
            extra["history_weights"] = torch.zeros(1, device=device)  # leave nothing out of user 0's history
            if self.head is not None:
                extra["ratings"] = torch.full((1,), float("nan"), device=device)
            return users, pos, extra
        users, pos = batch["user_idx"].long().to(device), batch["item_idx"].long().to(device)
        if self.head is not None:
            extra["ratings"] = batch["rating"].float().to(device)
        if self.weighted:
            extra["weights"] = torch.exp(tc.recency_decay * (batch["recency"].float().to(device) - 1.0))
        if self.history_weighted:
            extra["history_weights"] = torch.exp(tc.history_decay * (batch["recency"].float().to(device) - 1.0))
        return users, pos, extra

    def _loss(self, users: torch.Tensor, pos: torch.Tensor, **extra: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, rating MSE) under ``train.loss``: BPR, sampled softmax or the full softmax."""
        n_items, device = self.inputs.n_items, self.place.device
        if self.tc.loss == "bpr":
            neg = torch.randint(0, n_items, pos.shape, generator=self.negatives).to(device)
            return self.ddp(users, pos, "bpr", neg, l2=self.tc.l2, **extra)
        if self.sampled:
            shared = torch.randint(0, n_items, (self.tc.softmax_negatives,), generator=self.negatives).to(device)
            return self.ddp(users, pos, "softmax", shared, n_items, **extra)
        return self.ddp(users, pos, "softmax", **extra)

    # ------------------------------------------------------------------ end of an epoch

    def end_epoch(self, epoch: int, totals: EpochTotals) -> bool:
        """Record, validate and checkpoint the epoch; True when every rank stops early here."""
        loss = totals.loss_sum / totals.rows
        # Every rank's sampler state and row count, so a resumed run continues each rank exactly.
        per_rank = self.place.gather({"negatives": self.negatives.get_state(), "torch_rng": torch.get_rng_state(),
                                      "rows": totals.rank_rows})
        record = {"epoch": epoch, "loss": loss, "rows": totals.rows, "rank_rows": [r["rows"] for r in per_rank],
                  "steps": totals.steps, "seconds": totals.seconds}  # steps and seconds: step time per rank
        if self.head is not None:
            record["rating_rmse"] = math.sqrt(totals.mse_sum / totals.rows)
        self.history.append(record)
        stop = self._validate(epoch, loss)
        if self.place.leader:
            self._checkpoint(epoch, per_rank)
        flag = torch.tensor([float(stop)], device=self.place.device)
        if self.place.distributed:
            dist.broadcast(flag, 0)  # after rank 0's checkpoint: every rank stops at the same epoch
        faults.inject("train.epoch_end", epoch)
        if flag.item() and self.place.leader:
            log.info("early stop after epoch %d: best validation ndcg@10 %.4f at epoch %d",
                     epoch, self.best["ndcg"], self.best["epoch"])
        return bool(flag.item())

    def _validate(self, epoch: int, loss: float) -> bool:
        """Track the best epoch (validation NDCG@10, or the loss without a validation split); early stop?"""
        if self.val is None:
            if self.inputs.validation is None and loss < self.best["loss"]:
                self.best = {"loss": loss, "ndcg": -1.0, "epoch": epoch}
            return False
        score = self.history[-1]["val_ndcg"] = validation.ndcg(export_factors(self.model, self.inputs), self.val)
        if score > self.best["ndcg"]:
            self.best = {"loss": loss, "ndcg": score, "epoch": epoch}
            model_store.save_best(self.model_dir, self.objective.state_dict())
        return epoch - self.best["epoch"] >= self.tc.patience

    def _checkpoint(self, epoch: int, per_rank: list[dict[str, Any]]) -> None:
        path = model_store.save_checkpoint(self.model_dir, epoch, {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rating_head": self.head.state_dict() if self.head is not None else None,
            "negatives": [r["negatives"] for r in per_rank], "torch_rng": [r["torch_rng"] for r in per_rank],
            "history": self.history, "best": self.best, "train": redaction.redacted(self.inputs.train),
            "table_version": self.inputs.table_version, "fingerprint": self.fingerprint,
            "mlflow_run_id": self.tracker.run_id,
        })
        last = self.history[-1]
        self.tracker.log_epoch(epoch, {k: last[k] for k in ("loss", "val_ndcg", "rating_rmse") if k in last})
        self.progress.set_postfix(loss=f"{last['loss']:.4f}")
        log.info("epoch %d: loss %.4f%s over %d rows, checkpoint %s", epoch, last["loss"],
                 f", validation ndcg@10 {last['val_ndcg']:.4f}" if "val_ndcg" in last else "", last["rows"], path.name)

    # ------------------------------------------------------------------ publish

    def publish(self) -> None:
        """Rank 0 writes the model files, then ``meta.json``, renames the folder into place, then moves
        ``models/LATEST`` to a serving model (forward only)."""
        ranks = self.place.gather({"weights_sha256": weights_digest(self.model), **lifeline.placement()})
        if self.place.leader:
            best = model_store.load_best(self.model_dir) if self.val is not None else None
            if best is not None:  # publish the best validation epoch, not the last one
                self.objective.load_state_dict(best)
            export_factors(self.model, self.inputs).save(self.model_dir / model_store.FACTORS_FILE)
            head_path = self.model_dir / model_store.RATING_HEAD_FILE
            if self.head is not None:
                RatingPredictor.from_head(self.head).save(head_path)
            else:
                head_path.unlink(missing_ok=True)
            model_store.save_model(self.model_dir / model_store.MODEL_FILE, self.model, self.head, redaction.redacted(self.inputs.train))
            meta = self._meta(ranks)
            model_store.write_meta(self.model_dir, meta)
            self.tracker.finish(self.model_dir, {
                "final_loss": meta["final_loss"], "train_seconds": meta["train_seconds"],
                **({"best_val_ndcg": self.best["ndcg"]} if self.val is not None else {})})
            final = model_store.finish(self.model_dir, self.inputs.model_version)
            if self.inputs.role == model_store.SERVING:
                model_store.publish_latest(final, self.inputs.ds)
        self.place.barrier()

    def _meta(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model_version": self.inputs.model_version, "ds": self.inputs.ds, "role": self.inputs.role,
            "warm_start": self.inputs.warm_start,
            "world_size": self.place.world_size, "device": str(self.place.device),
            "table_version": self.inputs.table_version,
            "input_versions": self.inputs.input_versions,
            "train": redaction.redacted(self.inputs.train),
            "history": self.history,
            "final_loss": self.history[-1]["loss"],
            "best": self.best,
            "resumed_from_epoch": self.resumed_from,
            "restarts": self.restarts,
            "train_seconds": round(time.time() - self.started, 2),
            "weights_sha256": ranks[0]["weights_sha256"],
            "rank_weights_sha256": [r["weights_sha256"] for r in ranks],
            "ranks": ranks,  # host, pid and working directory of each rank (a Spark executor's on a cluster)
            "mlflow_run_id": self.tracker.run_id,
        }


@faults.job("train")
def train_worker(inputs_paths: list[str], restarts: int = 0) -> None:
    """One DDP rank, start to finish, for each model in turn: a night's two take one launch. ``restarts`` (for
    meta.json) is an argument, not the environment: ranks on Spark executors do not inherit the driver's."""
    lifeline.exit_with_launcher()
    place = set_up_rank()
    for path in inputs_paths:
        trainer = Trainer(TrainInputs.load(path), place, restarts)
        trainer.restore()
        for epoch in trainer.epochs():
            if trainer.end_epoch(epoch, trainer.run_epoch(epoch)):
                break
        trainer.publish()
    if place.distributed:
        dist.destroy_process_group()
