"""Distributed trainer: Petastorm shards of features.training_examples -> torch DDP -> models/<version>/.

The driver (``run``) pins the table version, writes ``inputs.json`` with the active file list and
launches the workers; each worker (``train_worker``) needs torch, pyarrow and petastorm only.

Launch, one node, 2 CPU processes (what ``jobs/train.py`` does with launcher=torchrun):
    torchrun --nproc_per_node=2 -m lakerec.train --inputs models/<model_version>/inputs.json
Several nodes (same inputs.json on shared storage, run on every node):
    torchrun --nnodes=2 --node_rank=$NODE_RANK --nproc_per_node=8 \
        --rdzv_backend=c10d --rdzv_endpoint=$HOST:29500 -m lakerec.train --inputs .../inputs.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lakerec.config import Config, TrainConfig, resolve_path
from lakerec.data import ShortEpochError, count_rows, iterate_batches
from lakerec.models import FactorModel, MatrixFactorization, bpr_loss

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

FACTORS_FILE = "factors.npz"
INPUTS_FILE = "inputs.json"
META_FILE = "meta.json"
LATEST_FILE = "LATEST"


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

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainInputs":
        return cls(**json.loads(Path(path).read_text()))


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_worker(inputs_path: str) -> None:
    """One DDP rank: read this rank's Petastorm shard each epoch, train, rank 0 saves the model."""
    inputs = TrainInputs.load(inputs_path)
    tc = TrainConfig(**inputs.train)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    distributed = world_size > 1
    if distributed:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = MatrixFactorization(inputs.n_users, inputs.n_items, tc.dim).to(device)
    ddp = DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.Adam(ddp.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    negatives = torch.Generator().manual_seed(tc.seed * 1009 + rank)

    history = []
    started = time.time()
    for epoch in tqdm(range(tc.epochs), desc="train", disable=rank != 0):
        rows, loss_sum = 0, 0.0
        # join() lets ranks with fewer batches shadow the others' all-reduces (uneven shards).
        with ddp.join() if distributed else nullcontext():
            for batch in iterate_batches(
                inputs.files, tc.batch_size, ["user_idx", "item_idx"], rank, world_size,
                epoch=epoch, seed=tc.seed, workers=tc.reader_workers, shuffle_buffer=tc.shuffle_buffer,
            ):
                users = batch["user_idx"].long().to(device)
                pos = batch["item_idx"].long().to(device)
                neg = torch.randint(0, inputs.n_items, pos.shape, generator=negatives).to(device)
                loss = bpr_loss(ddp, users, pos, neg, tc.l2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                rows += len(users)
                loss_sum += loss.item() * len(users)
        totals = torch.tensor([rows, loss_sum], dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(totals)
        if int(totals[0]) != inputs.total_rows:
            raise ShortEpochError(
                f"epoch {epoch}: ranks read {int(totals[0])} rows, table version {inputs.table_version} "
                f"has {inputs.total_rows}"
            )
        history.append({"epoch": epoch, "loss": float(totals[1] / totals[0]), "rows": int(totals[0]), "rank_rows": rows})
        if rank == 0:
            log.info("epoch %d: loss %.4f over %d rows", epoch, history[-1]["loss"], int(totals[0]))

    model_dir = Path(inputs.model_dir)
    rank_dir = model_dir / "ranks"
    rank_dir.mkdir(parents=True, exist_ok=True)
    digest = _weights_digest(model)
    (rank_dir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "weights_sha256": digest, "history": history}))
    if rank == 0:
        FactorModel.from_mf(model).save(model_dir / FACTORS_FILE)
        torch.save({"state_dict": model.state_dict(), "n_users": inputs.n_users, "n_items": inputs.n_items,
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
            "train_seconds": round(time.time() - started, 2),
            "weights_sha256": digest,
        }
        (model_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


def prepare(spark: "SparkSession", cfg: Config, ds: str) -> TrainInputs:
    """Pin the input table versions and write ``inputs.json`` for the workers."""
    from lakerec import tables
    from lakerec.data import active_files

    versions = {
        t.qualified: tables.version(spark, cfg, t)
        for t in (tables.TRAINING_EXAMPLES, tables.ID_MAP_USERS, tables.ID_MAP_ITEMS, tables.SILVER_INTERACTIONS)
    }
    table_version = versions[tables.TRAINING_EXAMPLES.qualified]
    files = active_files(spark, tables.TRAINING_EXAMPLES.path(cfg), table_version)
    n_users = tables.read(spark, cfg, tables.ID_MAP_USERS, versions[tables.ID_MAP_USERS.qualified]).count()
    n_items = tables.read(spark, cfg, tables.ID_MAP_ITEMS, versions[tables.ID_MAP_ITEMS.qualified]).count()
    model_version = f"mf-{ds}-t{table_version}"
    model_dir = Path(resolve_path(cfg.models_dir)) / model_version
    model_dir.mkdir(parents=True, exist_ok=True)
    inputs = TrainInputs(
        model_version=model_version,
        model_dir=str(model_dir),
        files=files,
        table_version=table_version,
        total_rows=count_rows(files),
        n_users=n_users,
        n_items=n_items,
        input_versions=versions,
        train=asdict(cfg.train),
    )
    inputs.save(model_dir / INPUTS_FILE)
    return inputs


def launch(cfg: Config, inputs_path: Path) -> None:
    """Run ``train_worker`` on ``train.num_processes`` ranks with the configured launcher."""
    n = cfg.train.num_processes
    if cfg.train.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "lakerec.train", "--inputs", str(inputs_path)]
        subprocess.run(cmd, check=True)
    else:
        from pyspark.ml.torch.distributor import TorchDistributor

        use_gpu = torch.cuda.is_available()
        TorchDistributor(num_processes=n, local_mode=True, use_gpu=use_gpu).run(train_worker, str(inputs_path))


def latest_model_dir(cfg: Config) -> Path:
    """The directory of the last model that finished training (``models/LATEST``)."""
    root = Path(resolve_path(cfg.models_dir))
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        raise FileNotFoundError(f"no trained model under {root}: run the train job first")
    return root / pointer.read_text().strip()


def _publish_latest(model_dir: Path) -> None:
    pointer = model_dir.parent / LATEST_FILE
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(model_dir.name)
    os.replace(tmp, pointer)  # atomic: scorers never read a half-written pointer


def run(spark: "SparkSession", cfg: Config, ds: str) -> dict:
    """Train on the current feature tables; returns the model's meta.json contents."""
    inputs = prepare(spark, cfg, ds)
    model_dir = Path(inputs.model_dir)
    (model_dir / META_FILE).unlink(missing_ok=True)
    launch(cfg, model_dir / INPUTS_FILE)
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():  # the launcher returns whichever rank ended last: check rank 0's output
        raise RuntimeError(f"training finished without rank 0 writing {meta_path}")
    _publish_latest(model_dir)
    meta = json.loads(meta_path.read_text())
    log.info("trained %s in %.1fs, final loss %.4f", meta["model_version"], meta["train_seconds"], meta["final_loss"])
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description="lakerec DDP training worker (run under torchrun)")
    parser.add_argument("--inputs", required=True, help="inputs.json written by the train job's prepare step")
    train_worker(parser.parse_args().inputs)


if __name__ == "__main__":
    main()
