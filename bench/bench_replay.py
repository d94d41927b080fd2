"""Benchmark: replay ml-latest-small as nightly drops and measure what the nightly run serves.

    make bench-replay                        # 7 nights
    make bench-replay NIGHTS=3
    python bench/bench_replay.py --nights 7 --cold --keep    # a cold retrain every night; keep the work dir

The ratings, sorted by time, are cut into an initial load (the first 80%) and NIGHTS daily drops,
each written as ``<work>/drops/<ds>/`` (cuts on UTC midnights, so a drop's ``ds`` is the date of
its latest event). The nightly pipeline then runs night by night with ``source.path`` pointing at
``<work>/drops/{ds}``. For each night after the first it prints the wall time and the next-day
hit@10 of the lists served the night before, of a model frozen after night 0, and of popularity,
and ends with the line
``replay nights=N next_day_hit@10 model=X frozen=Z popularity=Y seconds_per_night=S cold_seconds=C``
(hit rates averaged over nights, S the median incremental night, C the initial cold night).
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakerec.config import Config

log = logging.getLogger("bench_replay")

DAY_SECONDS = 86400
RATINGS_COLUMNS = ["userId", "movieId", "rating", "timestamp"]
ITEM_FILES = ("movies.csv", "tags.csv")  # item metadata is re-delivered with every drop
K = 10


def _ds_of(timestamp: int) -> str:
    """The UTC date (YYYY-MM-DD) of an epoch-seconds timestamp."""
    return dt.datetime.fromtimestamp(int(timestamp), dt.timezone.utc).date().isoformat()


def _cut_indices(boundaries: np.ndarray, targets: list[float]) -> list[int]:
    """For each target row count, the index into ``boundaries`` of the nearest one, kept strictly
    increasing and leaving enough boundaries for the cuts after it (so no drop is empty)."""
    chosen: list[int] = []
    for j, target in enumerate(targets):
        k = int(np.searchsorted(boundaries, target))
        candidates = [c for c in (k - 1, k) if 0 <= c < len(boundaries)]
        nearest = min(candidates, key=lambda c: abs(boundaries[c] - target))  # a tie goes to the earlier day
        low = chosen[-1] + 1 if chosen else 0
        high = len(boundaries) - (len(targets) - j)
        chosen.append(min(max(nearest, low), high))
    return chosen


def drop_cuts(day: np.ndarray, nights: int, initial_share: float) -> list[int]:
    """Row positions that end each drop but the last, all on a change of UTC day in ``day`` (sorted).

    The first cut lands nearest ``initial_share`` of the rows; the others nearest equal shares of
    the rest. Fewer than ``nights`` cuts only when the rest spans too few days.
    """
    n = len(day)
    boundaries = np.flatnonzero(np.diff(day)) + 1  # positions where a new UTC day starts
    if len(boundaries) < nights:
        log.warning("the data has %d day boundaries: %d nights instead of %d", len(boundaries), len(boundaries), nights)
        nights = len(boundaries)
    if nights == 0:
        return []
    initial = initial_share * n
    targets = [initial + j * (n - initial) / nights for j in range(nights)]
    return [int(boundaries[i]) for i in _cut_indices(boundaries, targets)]


def write_drops(source: Path, out: Path, nights: int, initial_share: float = 0.8) -> list[str]:
    """Write ``source/ratings.csv`` as an initial load and ``nights`` daily drops under ``out/<ds>/``.

    Each drop's ds is the UTC date of its latest event and no UTC date spans two drops, so a night
    sees exactly the events up to the end of its ds. Item files are copied into every drop.
    Returns the ds list, night 0 first.
    """
    # Ratings stay text, so 4.0 is written back as "4.0" and ingest reads what the source had.
    ratings = pd.read_csv(source / "ratings.csv", dtype={"userId": "int64", "movieId": "int64", "rating": str,
                                                         "timestamp": "int64"})
    with open(source / "ratings.csv", "rb") as f:
        newline = "\r\n" if f.readline().endswith(b"\r\n") else "\n"  # ml-latest-small ships CRLF lines
    ratings = ratings.sort_values(["timestamp", "userId", "movieId"], kind="mergesort", ignore_index=True)
    day = ratings["timestamp"].to_numpy() // DAY_SECONDS
    bounds = [0, *drop_cuts(day, nights, initial_share), len(ratings)]
    ds_list = []
    for start, end in zip(bounds, bounds[1:]):
        drop = ratings.iloc[start:end]
        ds = _ds_of(drop["timestamp"].iloc[-1])
        folder = out / ds
        folder.mkdir(parents=True, exist_ok=True)
        drop[RATINGS_COLUMNS].to_csv(folder / "ratings.csv", index=False, lineterminator=newline)
        for name in ITEM_FILES:
            shutil.copyfile(source / name, folder / name)
        log.info("drop %s: %d ratings", ds, len(drop))
        ds_list.append(ds)
    return ds_list


def served_hit_rates(spark: SparkSession, cfg: Config, ds: str) -> dict[str, float]:
    """hit@K the pipeline measured on ``ds`` for the lists served the night before: {model: value}."""
    from pyspark.sql import functions as F

    from lakerec import tables

    rows = (tables.read(spark, cfg, tables.METRICS)
            .where((F.col("ds") == ds) & (F.col("metric") == "hit_rate") & (F.col("k") == K)
                   & F.col("model").isin("served", "served_popularity"))
            .select("model", "value").collect())
    found = {r["model"]: r["value"] for r in rows}
    for model in ("served", "served_popularity"):
        if model not in found:
            log.warning("serving.metrics has no %s hit_rate@%d for ds=%s", model, K, ds)
    return found


def _mean(values: list[float]) -> float:
    """The average, NaN when there is nothing to average (a replay of night 0 only)."""
    return statistics.fmean(values) if values else math.nan


def _cell(value: float | None) -> str:
    """A hit rate for a night's line; blank on night 0, which has no previous lists to judge."""
    return "" if value is None else f"{value:.3f}"


def folded_model(spark: SparkSession, cfg: Config, snap, frozen_dir: Path, out: Path) -> Path:
    """The frozen model with tonight's whole history folded into its user vectors at export (the other
    way to serve from all history: no retraining); returns a folder holding its ``factors.npz``."""
    import torch

    from lakerec import tables
    from lakerec.model_store import FACTORS_FILE, MODEL_FILE, load_model, resolved_train
    from lakerec.models import FactorModel

    model, _ = load_model(frozen_dir / MODEL_FILE)
    n_users, n_items = model.user.num_embeddings, model.item.num_embeddings
    past = snap.read(spark, cfg, tables.SERVING_EXAMPLES).where(
        f"user_idx < {n_users} AND item_idx < {n_items}").select("user_idx", "item_idx", "recency").toPandas()
    decay = resolved_train(cfg).history_decay or 0.0
    weights = torch.exp(decay * (torch.from_numpy(past["recency"].to_numpy()).float() - 1.0))
    model.set_history(torch.from_numpy(past["user_idx"].to_numpy()).long(),
                      torch.from_numpy(past["item_idx"].to_numpy()).long(), weights)
    out.mkdir(parents=True, exist_ok=True)
    FactorModel.from_mf(model).save(out / FACTORS_FILE)
    return out


def replay(spark: SparkSession, cfg: Config, ds_list: list[str], work: Path) -> list[dict]:
    """Run the pipeline night by night; per night its seconds and next-day hit@K (none on night 0)."""
    from lakerec.feedback import next_day_metrics
    from lakerec.model_store import CHECKPOINT_DIR, latest_model_dir
    from lakerec.pipeline import run_all
    from lakerec.score import build_recommendations
    from lakerec.snapshot import Snapshot

    nights, frozen_dir = [], None
    for i, ds in enumerate(ds_list):
        log.info("night %d: ds=%s", i, ds)
        started = time.time()
        run_all(spark, cfg, ds)
        night = {"ds": ds, "seconds": time.time() - started, "served": None, "frozen": None, "folded": None,
                 "popularity": None}
        if i == 0:
            # A copy: warm starts and any model retention must never touch the frozen model.
            latest = latest_model_dir(cfg)
            frozen_dir = work / "frozen_model" / latest.name
            shutil.copytree(latest, frozen_dir, ignore=shutil.ignore_patterns(CHECKPOINT_DIR))
        else:
            served = served_hit_rates(spark, cfg, ds)
            lists = spark.read.parquet(str(work / "frozen_lists" / ds_list[i - 1]))
            folded = spark.read.parquet(str(work / "folded_lists" / ds_list[i - 1]))
            night.update(served=served.get("served", math.nan), popularity=served.get("served_popularity", math.nan),
                         frozen=next_day_metrics(spark, cfg, lists, ds, k=K)["hit_rate"],
                         folded=next_day_metrics(spark, cfg, folded, ds, k=K)["hit_rate"])
        if i + 1 < len(ds_list):
            # Written now: the lists must come from tonight's silver, before the next drop is ingested.
            snap = Snapshot.load(spark, cfg, ds)
            build_recommendations(spark, cfg, snap, frozen_dir).write.parquet(str(work / "frozen_lists" / ds))
            folded_dir = folded_model(spark, cfg, snap, frozen_dir, work / "folded_model" / ds)
            build_recommendations(spark, cfg, snap, folded_dir).write.parquet(str(work / "folded_lists" / ds))
        print(f"night {i} ds={ds} seconds={night['seconds']:.0f} hit@{K} served={_cell(night['served'])} "
              f"frozen={_cell(night['frozen'])} folded={_cell(night['folded'])} "
              f"popularity={_cell(night['popularity'])}", flush=True)
        nights.append(night)
    return nights


def summary(nights: list[dict]) -> str:
    """The benchmark's last two lines: the fold-in alternative, then hit rates averaged over the
    incremental nights and their median seconds."""
    later = nights[1:]
    seconds = statistics.median(n["seconds"] for n in later) if later else math.nan
    return (f"fold-in of the frozen model: next_day_hit@{K}={_mean([n['folded'] for n in later]):.3f}\n"
            f"replay nights={len(later)} next_day_hit@{K} model={_mean([n['served'] for n in later]):.3f} "
            f"frozen={_mean([n['frozen'] for n in later]):.3f} popularity={_mean([n['popularity'] for n in later]):.3f} "
            f"seconds_per_night={seconds:.0f} cold_seconds={nights[0]['seconds']:.0f}")


def _parse_args() -> argparse.Namespace:
    """The command line; ``NIGHTS`` in the environment is the default of ``--nights``."""
    from lakerec.config import REPO_ROOT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=int(os.environ.get("NIGHTS", 7)), help="daily drops after the initial load")
    parser.add_argument("--source", type=Path, default=REPO_ROOT / "data" / "ml-latest-small", help="MovieLens-latest folder")
    parser.add_argument("--work", type=Path, help="empty folder for drops, warehouse, models (default: a temp dir under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the default temp work dir")
    parser.add_argument("--cold", action="store_true", help="a cold retrain every night (nightly.warm_start=false)")
    parser.add_argument("--stop-after", type=int, metavar="K",
                        help="run only nights 0..K of the NIGHTS drops (a shorter run over the same nights)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override (repeatable)")
    return parser.parse_args()


def main() -> None:
    from lakerec.cli import setup_logging
    from lakerec.config import load_config
    from lakerec.spark import build_spark

    args = _parse_args()
    setup_logging()
    if args.work and args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"--work {args.work} is not empty: a replay starts from an empty warehouse")
    work = args.work or Path(tempfile.mkdtemp(prefix="lakerec-replay-", dir="/tmp"))
    log.info("work dir: %s", work)
    try:
        ds_list = write_drops(args.source, work / "drops", args.nights)[: None if args.stop_after is None else args.stop_after + 1]
        extra = [*(["nightly.warm_start=false"] if args.cold else []), *args.set]
        cfg = load_config("local", overrides=[
            f"warehouse={work}/warehouse", f"models_dir={work}/models", f"reports_dir={work}/reports",
            f"source.path={work}/drops/{{ds}}", "source.name=replay", "nightly.backtest_every=0", *extra,
        ])
        spark = build_spark(cfg)
        try:
            print(summary(replay(spark, cfg, ds_list, work)))
        finally:
            spark.stop()
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
