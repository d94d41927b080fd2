"""Scoring benchmark: the lakerec scorer vs Spark ALS recommendForAllUsers vs a bare torch bound.

    make bench-score                 # MovieLens 25M shape: 162,541 users x 59,047 items, d=64, N=100
    make bench-score SCALE=0.1       # users and items x 0.1 (work x 0.01), for a quick run
    .venv/bin/python bench/bench_score.py --scale 0.1 --set score.block_size=512 --no-als

One run, one machine, the same synthetic factors and users for all three:
(a) lakerec end to end: read the users table (user_idx, seen array) -> score_users -> Delta
    replaceWhere of one ds; (b) an ALSModel built from the same factors (item bias as one more
    factor dimension) -> recommendForAllUsers(N) -> the same kind of Delta write; (c) the bound:
    top_n_block over the same blocks in this process, no Spark. Prints
    ``speedup_vs_als=(b)/(a) bound_ratio=(a)/(c)`` last, and with --record updates BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import FloatType, IntegerType, StringType, StructField, StructType
from tqdm import tqdm

from lakerec import score, tables
from lakerec.config import REPO_ROOT, Config, load_config
from lakerec.models import FactorModel, top_n_block
from lakerec.synthetic import ML25M_ITEMS, ML25M_USERS, random_factors
from lakerec.spark import build_spark

BENCH_DS = "2026-01-01"
SECTION = "## Scoring"

_RECS_SCHEMA = StructType([
    StructField("ds", StringType(), False), StructField("user_idx", IntegerType(), False),
    StructField("rank", IntegerType(), False), StructField("item_idx", IntegerType(), False),
    StructField("score", FloatType(), False),
])
# Both sides write like serving.recommendations: file statistics on the user column only.
_RECS_PROPERTIES = (("delta.dataSkippingStatsColumns", "user_idx"),)
LAKEREC_RECS = tables.Table("bench", "recs_lakerec", _RECS_SCHEMA, partition_by=("ds",), properties=_RECS_PROPERTIES)
ALS_RECS = tables.Table("bench", "recs_als", _RECS_SCHEMA, partition_by=("ds",), properties=_RECS_PROPERTIES)


def machine() -> dict:
    """nproc, CPU model, RAM and load average of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1), "torch": torch.__version__}


def load() -> str:
    """The 1/5/15-minute load averages (other agents share this machine)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def synthetic_users(spark: SparkSession, n_users: int, n_items: int, mean_seen: int, seed: int) -> DataFrame:
    """(user_idx, seen): about ``mean_seen`` distinct items per user (long-tailed), skewed to popular items."""
    uniform = lambda *cols: (F.pmod(F.xxhash64(*cols, F.lit(seed)), F.lit(1_000_003)) + 1) / F.lit(1_000_004)  # noqa: E731
    floor_seen = min(20, mean_seen)
    n_seen = F.least(F.lit(n_items), (F.lit(floor_seen) - F.log(uniform("user_idx")) * (mean_seen - floor_seen)).cast("int"))
    seen = F.array_distinct(F.transform(
        F.sequence(F.lit(1), F.greatest(n_seen, F.lit(1))),
        lambda x: F.least(F.lit(n_items - 1), F.floor(F.pow(uniform("user_idx", x), 2) * n_items)).cast("int"),
    ))
    return spark.range(n_users).select(F.col("id").cast("int").alias("user_idx")).select("user_idx", seen.alias("seen"))


def factor_frame(spark: SparkSession, factors: np.ndarray) -> DataFrame:
    """(id int, features array<float>): the layout of ALSModel.userFactors / itemFactors."""
    import pandas as pd

    pdf = pd.DataFrame({"id": np.arange(len(factors), dtype=np.int32), "features": list(factors)})
    return spark.createDataFrame(pdf, "id int, features array<float>")


def warm_up(spark: SparkSession, cfg: Config, users_path: str, model: FactorModel) -> float:
    """Start the Python workers (torch import) on a few users, untimed in (a); returns seconds."""
    start = time.perf_counter()
    users = spark.read.format("delta").load(users_path).limit(2000)
    score.score_users(users, model, "bench-warm-up", cfg.score.top_n, cfg.score.block_size,
                      cfg.score.threads_per_worker).write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def run_lakerec(spark: SparkSession, cfg: Config, users_path: str, model_path: Path) -> float:
    """(a) read users -> score_users -> Delta replaceWhere; returns seconds."""
    start = time.perf_counter()
    model = FactorModel.load(model_path)
    users = spark.read.format("delta").load(users_path)
    scored = score.score_users(users, model, f"bench-{time.time_ns()}", cfg.score.top_n, cfg.score.block_size,
                               cfg.score.threads_per_worker)
    tables.replace_where(scored.withColumn("ds", F.lit(BENCH_DS)), cfg, LAKEREC_RECS, f"ds = '{BENCH_DS}'")
    return time.perf_counter() - start


def run_als(spark: SparkSession, cfg: Config, user_path: str, item_path: str, rank: int) -> float:
    """(b) ALSModel from the same factors -> recommendForAllUsers(N) -> Delta replaceWhere; returns seconds."""
    start = time.perf_counter()
    user_f = spark.read.format("delta").load(user_path)
    item_f = spark.read.format("delta").load(item_path)
    # ALSModel's constructor is Scala private[ml], public in bytecode: build the model from our factors.
    java_model = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("bench-als", rank, user_f._jdf, item_f._jdf)
    java_model.setUserCol("user").setItemCol("item")
    model = ALSModel(java_model)
    model._transfer_params_from_java()
    recs = model.recommendForAllUsers(cfg.score.top_n).select("user", F.posexplode("recommendations").alias("pos", "rec"))
    recs = recs.select(
        F.lit(BENCH_DS).alias("ds"), F.col("user").alias("user_idx"), (F.col("pos") + 1).alias("rank"),
        F.col("rec.item").alias("item_idx"), F.col("rec.rating").alias("score"),
    )
    tables.replace_where(recs, cfg, ALS_RECS, f"ds = '{BENCH_DS}'")
    return time.perf_counter() - start


def run_bound(model: FactorModel, lengths: np.ndarray, seen: np.ndarray, cfg: Config) -> float:
    """(c) top_n_block over the same blocks in this process with every core, no Spark; returns seconds."""
    torch.set_num_threads(os.cpu_count())
    user_f, item_f, bias = (torch.from_numpy(a) for a in (model.user_factors, model.item_factors, model.item_bias))
    block = cfg.score.block_size
    buffer = torch.empty(block, item_f.shape[0])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    start = time.perf_counter()
    for lo in tqdm(range(0, len(lengths), block), desc="bound (c)", unit="block", mininterval=5):
        hi = min(lo + block, len(lengths))
        top_n_block(user_f[lo:hi], item_f, bias, lengths[lo:hi], seen[offsets[lo]:offsets[hi]],
                    cfg.score.top_n, buffer)
    return time.perf_counter() - start


def record(path: Path, result: dict) -> None:
    """Replace this shape's block inside the Scoring section of BENCHMARKS.md (created if absent)."""
    tag = f"scale={result['scale']}"
    begin, end = f"<!-- bench-score {tag} begin -->", f"<!-- bench-score {tag} end -->"
    m, s = result["machine"], result["seconds"]
    block = "\n".join([
        begin,
        f"### {result['users']:,} users x {result['items']:,} items, d={result['dim']}, N={result['top_n']} ({tag})",
        "",
        f"Run {result['when']} with `{result['command']}`, git {result['git']} at the start.",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, torch {m['torch']}; "
        f"Spark `{result['spark']['master']}`, block_size={result['spark']['block_size']}, "
        f"threads_per_worker={result['spark']['threads']}, arrow batch={result['spark']['arrow_batch']}.",
        f"Seen items per user: {result['mean_seen']:.0f} on average ({result['seen_total']:,} in all).",
        "",
        "| what | seconds | rows written | load avg before -> after (1/5/15 min) |",
        "|---|---:|---:|---|",
        *(f"| {label} | {s[k]:.1f} | {format(result['rows'][k], ',') if k in result['rows'] else '-'} "
          f"| {result['load'][k][0]} -> {result['load'][k][1]} |"
          for k, label in (("a", "(a) lakerec scorer, Spark + Delta write"),
                           ("b", "(b) Spark ALS recommendForAllUsers + Delta write"),
                           ("c", "(c) bound: torch GEMM + topk, one process")) if k in s),
        "",
        f"Python worker start-up before (a) (torch import, 2,000 users, not counted): {s['warm_up']:.1f} s.",
        "",
        f"`{result['line']}`",
        end,
    ])
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nMeasured numbers, each with its machine and command. Sections are owned by the stage they measure.\n"
    )
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n`make bench-score [SCALE=0.1]` (bench/bench_score.py).\n"
    head, rest = text.split(SECTION, 1)
    nxt = re.search(r"^## ", rest, flags=re.M)
    section, tail = (rest[: nxt.start()], rest[nxt.start():]) if nxt else (rest, "")
    if begin in section:
        section = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, section, flags=re.S)
    else:
        section = section.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(head + SECTION + section.rstrip("\n") + "\n" + ("\n" + tail if tail else ""))


def main() -> None:
    """Build the inputs, time (c), (a), (b), report and print the final line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="users and items as a fraction of MovieLens 25M")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--mean-seen", type=int, default=150, help="average training items per user")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "out"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--no-als", action="store_true", help="skip (b), e.g. while tuning (a)")
    parser.add_argument("--record", type=Path, help="update the Scoring section of this markdown file")
    args = parser.parse_args()

    n_users, n_items = round(ML25M_USERS * args.scale), round(ML25M_ITEMS * args.scale)
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()
    out = Path(args.out).resolve()
    shutil.rmtree(out / "warehouse", ignore_errors=True)
    (out / "spark-local").mkdir(parents=True, exist_ok=True)
    cfg = load_config("local", overrides=[
        f"warehouse={out}/warehouse", f"models_dir={out}/models", f"score.top_n={args.top_n}",
        f"spark.conf={{spark.local.dir: '{out}/spark-local'}}", "spark.driver_memory=6g", *args.set,
    ])
    spark = build_spark(cfg)
    warehouse = f"{out}/warehouse/bench"

    print(f"inputs: {n_users:,} users x {n_items:,} items, d={args.dim}", flush=True)
    model = random_factors(n_users, n_items, args.dim, args.seed)
    model_path = out / "models" / "bench" / "factors.npz"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    users_path = f"{warehouse}/users"
    synthetic_users(spark, n_users, n_items, args.mean_seen, args.seed).repartition(
        spark.sparkContext.defaultParallelism).write.format("delta").mode("overwrite").save(users_path)
    users = spark.read.format("delta").load(users_path).orderBy("user_idx").toArrow()
    lengths = users.column("seen").combine_chunks().value_lengths().to_numpy().astype(np.int64)
    seen = users.column("seen").combine_chunks().flatten().to_numpy().astype(np.int64)

    seconds, rows, loads = {}, {}, {}
    loads["c"] = [load()]
    seconds["c"] = run_bound(model, lengths, seen, cfg)
    loads["c"].append(load())
    print(f"(c) bound: {seconds['c']:.1f}s", flush=True)

    seconds["warm_up"] = warm_up(spark, cfg, users_path, model)
    print(f"worker warm-up (not in (a)): {seconds['warm_up']:.1f}s", flush=True)
    loads["a"] = [load()]
    seconds["a"] = run_lakerec(spark, cfg, users_path, model_path)
    loads["a"].append(load())
    rows["a"] = tables.read(spark, cfg, LAKEREC_RECS).count()
    print(f"(a) lakerec: {seconds['a']:.1f}s, {rows['a']:,} rows", flush=True)

    if not args.no_als:
        ones = np.ones((n_users, 1), np.float32)
        user_path, item_path = f"{warehouse}/als_user_factors", f"{warehouse}/als_item_factors"
        factor_frame(spark, np.hstack([model.user_factors, ones])).write.format("delta").mode("overwrite").save(user_path)
        factor_frame(spark, np.hstack([model.item_factors, model.item_bias[:, None]])).write.format("delta").mode(
            "overwrite").save(item_path)
        loads["b"] = [load()]
        seconds["b"] = run_als(spark, cfg, user_path, item_path, args.dim + 1)
        loads["b"].append(load())
        rows["b"] = tables.read(spark, cfg, ALS_RECS).count()
        print(f"(b) ALS: {seconds['b']:.1f}s, {rows['b']:,} rows", flush=True)

    speedup = f"{seconds['b'] / seconds['a']:.2f}" if "b" in seconds else "nan"
    line = f"speedup_vs_als={speedup} bound_ratio={seconds['a'] / seconds['c']:.2f}"
    result = {
        "scale": args.scale, "users": n_users, "items": n_items, "dim": args.dim, "top_n": args.top_n,
        "mean_seen": len(seen) / max(n_users, 1), "seen_total": len(seen),
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"make bench-score SCALE={args.scale}" + (f" (+ {' '.join(args.set)})" if args.set else ""),
        "git": git,
        "machine": machine(), "seconds": seconds, "rows": rows, "load": loads, "line": line,
        "spark": {"master": cfg.spark.master, "block_size": cfg.score.block_size,
                  "threads": cfg.score.threads_per_worker, "arrow_batch": cfg.spark.arrow_batch_size},
    }
    (out / f"result-scale-{args.scale}.json").write_text(json.dumps(result, indent=2))
    if args.record:
        record(args.record if args.record.is_absolute() else REPO_ROOT / args.record, result)
    spark.stop()
    print(line)


if __name__ == "__main__":
    main()
