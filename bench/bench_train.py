"""``make bench-train``: Petastorm loader vs raw pyarrow vs training, on 5M+ training examples.

Writes ``--rows`` synthetic training examples (the features table's schema) into
features.training_examples of a temporary warehouse with the features job's layout (Delta, Spark,
``features.training_files`` files repartitioned by user and sorted), pins that version's active
files from the Delta log, then measures in this one process:

  (a) loader: make_batch_reader + BatchedDataLoader (thread pool, race-patched) as the trainer
      uses it, fresh reader per pass: rows/s per process;
  (b) bound: pyarrow reading the same files and columns into numpy arrays, one file per thread on
      as many threads as the loader has readers (``--workers``), memory-mapped like the loader: rows/s;
  (c) training: ``train_worker`` (the default model and loss, one rank, CPU) for one epoch over the
      first ``--train-rows`` examples: examples/s.

(a) and (b) run ``--repeats`` interleaved passes each; the best pass counts (the machine is shared).
The last line printed is ``loader_rows_per_s=X raw_rows_per_s=Y``.

    python bench/bench_train.py [--scale 1.0] [--rows 20000000] [--train-rows 500000] [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lakerec.config import load_config
from lakerec.data import active_files, count_rows, iterate_batches
from lakerec.model_store import META_FILE, TrainInputs
from lakerec.model_store import resolved_train
from lakerec.trainer import train_worker

COLUMNS = ["user_idx", "item_idx", "label"]
log = logging.getLogger("bench_train")


def machine() -> dict:
    """What the numbers were measured on: cores, CPU model, memory and the current load."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1),
            "load_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def write_examples(root: Path, rows: int, n_users: int, n_items: int, block_size: int) -> tuple[list[str], int]:
    """Training examples through Spark + Delta in the features job's layout; (active files, version)."""
    from pyspark.sql import functions as F

    from lakerec import tables
    from lakerec.spark import build_spark

    cfg = load_config("local", overrides=[f"warehouse={root}/warehouse", f"spark.conf={{spark.local.dir: '{root}'}}"])
    spark = build_spark(cfg)
    if block_size:
        spark.sparkContext._jsc.hadoopConfiguration().set("parquet.block.size", str(block_size))
    ids = spark.range(rows, numPartitions=cfg.features.training_files)
    examples = ids.select(
        (F.xxhash64("id", F.lit(1)) % n_users).cast("int").alias("user_idx"),
        (F.xxhash64("id", F.lit(2)) % n_items).cast("int").alias("item_idx"),
        F.lit(1.0).cast("float").alias("label"),
        ((F.abs(F.xxhash64("id", F.lit(3))) % 10 + 1) / 2.0).alias("rating"),
        ((F.abs(F.xxhash64("id", F.lit(4))) % 1000) / 999.0).cast("float").alias("recency"),
    ).select(F.abs("user_idx").alias("user_idx"), F.abs("item_idx").alias("item_idx"), "label", "rating", "recency")
    examples = examples.repartition(cfg.features.training_files, "user_idx").sortWithinPartitions("user_idx", "item_idx")
    tables.overwrite(examples, cfg, tables.TRAINING_EXAMPLES)
    version = tables.version(spark, cfg, tables.TRAINING_EXAMPLES)
    files = active_files(spark, tables.TRAINING_EXAMPLES.path(cfg), version)
    spark.stop()
    return files, version


def loader_pass(files: list[str], batch_size: int, workers: int, epoch: int) -> float:
    """One epoch through the trainer's Petastorm reader: rows/s."""
    started, rows = time.perf_counter(), 0
    for batch in iterate_batches(files, batch_size, COLUMNS, epoch=epoch, seed=1, workers=workers):
        rows += len(batch["user_idx"])
    return rows / (time.perf_counter() - started)


def raw_pass(files: list[str], workers: int) -> float:
    """The same files and columns read by pyarrow straight into numpy arrays, row group by row group,
    one file per thread on ``workers`` threads (the loader's reader count), memory-mapped as the
    loader reads local files: rows/s."""
    def read(f: str) -> int:
        parquet, rows = pq.ParquetFile(f.removeprefix("file:"), memory_map=True), 0
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=COLUMNS, use_threads=False)
            rows += len([table.column(c).to_numpy() for c in COLUMNS][0])
        return rows

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        rows = sum(pool.map(read, files))
    return rows / (time.perf_counter() - started)


def training_sample(root: Path, files: list[str], rows: int) -> str:
    """The first ``rows`` examples of the table as one parquet file, so (c) stays short at any --rows."""
    tables_read, n = [], 0
    for f in files:
        if n >= rows:
            break
        tables_read.append(pq.read_table(f.removeprefix("file:")))
        n += tables_read[-1].num_rows
    path = root / "training_sample.parquet"
    pq.write_table(pa.concat_tables(tables_read).slice(0, rows), path)
    return str(path)


def train_pass(root: Path, files: list[str], version: int, n_users: int, n_items: int, batch_size: int) -> dict:
    """One epoch of the real trainer (one rank) on ``files``: examples/s and the loss."""
    cfg = load_config("local", overrides=[f"train.batch_size={batch_size}", "train.epochs=1", "train.resume=false", "train.model=mf"])
    model_dir = root / "models" / "bench"
    model_dir.mkdir(parents=True, exist_ok=True)
    inputs = TrainInputs("bench", str(model_dir), files, version, count_rows(files), n_users, n_items,
                         {"features.training_examples": version}, asdict(resolved_train(cfg)))
    inputs.save(model_dir / "inputs.json")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(key, None)
    train_worker([str(model_dir / "inputs.json")])
    meta = json.loads((model_dir / META_FILE).read_text())
    return {"rows": inputs.total_rows, "batch_size": batch_size, "dim": cfg.train.dim,
            "seconds": meta["train_seconds"], "examples_per_s": inputs.total_rows / meta["train_seconds"],
            "loss": meta["final_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies --rows and --train-rows (0.1: quick run)")
    parser.add_argument("--rows", type=int, default=20_000_000, help="training examples to write at scale 1")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--block-size", type=int, default=0,
                        help="parquet.block.size in bytes when writing (0: Spark's default, 128 MiB)")
    parser.add_argument("--batch-size", type=int, default=65536, help="loader batch size for (a)")
    parser.add_argument("--workers", type=int, default=2, help="Petastorm reader threads for (a)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-rows", type=int, default=500_000,
                        help="(c) trains one epoch on the first files holding at least this many rows")
    parser.add_argument("--train-batch-size", type=int, default=8192)
    parser.add_argument("--out", default="bench/out/train.json")
    parser.add_argument("--workdir", help="keep the written table here and reuse it on the next run (tuning)")
    args = parser.parse_args()
    args.rows, args.train_rows = int(args.rows * args.scale), int(args.train_rows * args.scale)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("petastorm").setLevel(logging.WARNING)
    torch.set_num_threads(1)  # one DDP rank's share of a 2-core node

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(args.workdir or tmp)
        started = time.time()
        written = root / "examples.json"
        if args.workdir and written.is_file():
            files, version = json.loads(written.read_text())
        else:
            files, version = write_examples(root, args.rows, args.users, args.items, args.block_size)
            written.write_text(json.dumps([files, version]))
        row_groups = sum(pq.ParquetFile(f.removeprefix("file:")).metadata.num_row_groups for f in files)
        log.info("wrote %d rows in %d files, %d row groups (%.0fs)", count_rows(files), len(files), row_groups,
                 time.time() - started)
        raw_pass(files, args.workers)  # warm the page cache for both measurements
        loader, raw = [], []
        for epoch in range(args.repeats):  # interleaved: both see the same load on a shared machine
            loader.append(loader_pass(files, args.batch_size, args.workers, epoch))
            raw.append(raw_pass(files, args.workers))
        sweep = {f"batch={b} workers={w}": max(loader_pass(files, b, w, e) for e in range(3))
                 for b in (2048, 8192, 65536) for w in (1, 2)}
        log.info("loader best %.0f rows/s, raw best %.0f rows/s", max(loader), max(raw))
        training = train_pass(root, [training_sample(root, files, args.train_rows)], version, args.users,
                              args.items, args.train_batch_size)

    x, y = max(loader), max(raw)
    result = {
        "machine": machine(),
        "data": {"rows": args.rows, "files": len(files), "row_groups": row_groups, "users": args.users,
                 "items": args.items, "parquet_block_size": args.block_size or "spark default"},
        "loader": {"batch_size": args.batch_size, "workers": args.workers, "best_rows_per_s": x,
                   "median_rows_per_s": statistics.median(loader)},
        "raw": {"threads": args.workers, "best_rows_per_s": y, "median_rows_per_s": statistics.median(raw)},
        "loader_sweep_best_rows_per_s": sweep,
        "training": training,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"ratio={x / y:.2f} training_examples_per_s={training['examples_per_s']:.0f}")
    print(f"loader_rows_per_s={x:.0f} raw_rows_per_s={y:.0f}")


if __name__ == "__main__":
    main()
