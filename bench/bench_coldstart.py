"""Benchmark: cold-start users and items on ml-latest-small, seeded, through the nightly stages.

    make bench-quality                       # runs this after bench_quality.py
    python bench/bench_coldstart.py          # alone (10-20 minutes on 2 cores)

Protocols (seed 42): 10% of users and 10% of items (of those with ratings) are held out of training
entirely, their tags too (a new item has no users' tags yet; its title and genres are known). Night A
ingests the rest; features, embed and train build its serving model there. Cold
items: on night A, every held-out item's ratings by the training users are ranked among all items
(recall@100, micro: the share of those ratings in the user's top 100, their training items masked),
the item vectors mapped from content (``coldstart.items``) against random ones (each cold item takes
the vector and bias of a random warm item). Cold users: night B adds each held-out user's first 3
ratings by time; the segment job runs with A's model, and the scorer serves the held-out users by
``fold_in``, ``segment`` and ``blend`` (``coldstart.users``), beside the global popularity list; each
is scored by ndcg@10 on the user's other ratings (the 3 given masked, the whole catalogue ranked).
Writes the "Cold start" section of BENCHMARKS.md and ends with the two lines
``coldstart users ndcg@10 lakerec=… popularity=…`` and ``coldstart items recall@100 lakerec=… random=…``
(lakerec: the configured ``coldstart.users``, and content-mapped items).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakerec import embed, features, ingest, score, segment, tables, train
from lakerec.config import REPO_ROOT, Config, load_config
from lakerec.features import SPLITS
from lakerec.metrics import ndcg_at_k
from lakerec.model_store import FACTORS_FILE, models_root
from lakerec.models import FactorModel
from lakerec.snapshot import Snapshot
from lakerec.spark import build_spark

from bench_quality import write_section  # bench/ is on the path of a script run from it

OUT = REPO_ROOT / "bench" / "out" / "coldstart"
SOURCE = REPO_ROOT / "data" / "ml-latest-small"
DS = "2026-01-01"
SEED, HELD_OUT, GIVEN, K_USERS, K_ITEMS = 42, 0.10, 3, 10, 100
USER_METHODS = ("fold_in", "segment", "blend")


def split_source(source: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, set, set]:
    """Write source A (held-out users and items removed, their tags too) and B (A + each held-out user's first ratings);
    returns (held-out users' ratings, held-out items' ratings by training users, users, items)."""
    ratings = pd.read_csv(source / "ratings.csv")
    rng = np.random.default_rng(SEED)
    users, items = np.sort(ratings["userId"].unique()), np.sort(ratings["movieId"].unique())
    cold_users = set(rng.choice(users, int(round(HELD_OUT * len(users))), replace=False).tolist())
    cold_items = set(rng.choice(items, int(round(HELD_OUT * len(items))), replace=False).tolist())
    is_cold_user, is_cold_item = ratings["userId"].isin(cold_users), ratings["movieId"].isin(cold_items)
    by_time = ratings[is_cold_user].sort_values(["userId", "timestamp", "movieId"])
    given = by_time.groupby("userId").head(GIVEN)
    for name, rows in (("A", ratings[~is_cold_user & ~is_cold_item]), ("B", pd.concat([ratings[~is_cold_user & ~is_cold_item], given]))):
        folder = out / name
        folder.mkdir(parents=True)
        rows.to_csv(folder / "ratings.csv", index=False)
        shutil.copy(source / "movies.csv", folder / "movies.csv")
        tags = pd.read_csv(source / "tags.csv")  # users' tags are interactions: a new item has none yet
        tags[~tags["movieId"].isin(cold_items) & ~tags["userId"].isin(cold_users)].to_csv(folder / "tags.csv", index=False)
    return by_time, ratings[is_cold_item & ~is_cold_user], cold_users, cold_items


def _keyed(spark: SparkSession, cfg: Config, snap: Snapshot, table: tables.Table) -> dict[str, int]:
    """An id map of ``snap`` as {key: idx}."""
    return {r["key"]: r["idx"] for r in snap.read(spark, cfg, table).collect()}


def _lists(scored: DataFrame) -> dict[int, list[int]]:
    """{user_idx: item_idx by rank} of scorer rows."""
    pdf = scored.select("user_idx", "rank", "item_idx").toPandas().sort_values(["user_idx", "rank"])
    return {int(u): g["item_idx"].tolist() for u, g in pdf.groupby("user_idx")}


def item_recall(spark: SparkSession, cfg: Config, snap: Snapshot, model_dir: Path, held: pd.DataFrame) -> dict[str, float]:
    """recall@100 of the held-out items' ratings by training users: content-mapped against random cold items."""
    users, items = _keyed(spark, cfg, snap, tables.ID_MAP_USERS), _keyed(spark, cfg, snap, tables.ID_MAP_ITEMS)
    truth = {(users[str(u)], items[str(i)]) for u, i in zip(held["userId"], held["movieId"])}
    examples = snap.read(spark, cfg, tables.SERVING_EXAMPLES)
    base = FactorModel.load(model_dir / FACTORS_FILE)
    counts = score.item_counts(examples, base.item_factors.shape[0])
    mapped = score.serving_factors(spark, cfg, snap, base, counts)
    rng = np.random.default_rng(SEED)
    cold, warm = np.flatnonzero(counts == 0), np.flatnonzero(counts > 0)
    donors = rng.choice(warm, len(cold))
    random_items, random_bias = base.item_factors.copy(), base.item_bias.copy()
    random_items[cold], random_bias[cold] = base.item_factors[donors], base.item_bias[donors]
    catalogue = score.catalogue(spark, cfg, snap)
    wanted = spark.createDataFrame([(u,) for u in sorted({u for u, _ in truth})], "user_idx int")
    seen = wanted.join(score.seen_items(snap.read(spark, cfg, tables.SILVER_INTERACTIONS), SPLITS), "user_idx", "left")
    recall = {}
    for name, model in (("content", mapped), ("random", FactorModel(base.user_factors, random_items, random_bias))):
        lists = _lists(score.score_users(seen, score.in_catalogue(model, catalogue), f"{name}-{uuid.uuid4().hex}",
                                         K_ITEMS, cfg.score.block_size, cfg.score.threads_per_worker))
        recall[name] = sum(i in lists.get(u, ())[:K_ITEMS] for u, i in truth) / len(truth)
    return recall


def user_ndcg(spark: SparkSession, cfg: Config, snap: Snapshot, model_dir: Path, cold_ratings: pd.DataFrame) -> dict[str, float]:
    """ndcg@10 of the held-out users on their ratings after the first 3: each method, and popularity."""
    users, items = _keyed(spark, cfg, snap, tables.ID_MAP_USERS), _keyed(spark, cfg, snap, tables.ID_MAP_ITEMS)
    rest = {u: g["movieId"].iloc[GIVEN:].astype(str).tolist() for u, g in cold_ratings.groupby("userId")}
    truth = {users[str(u)]: {items[i] for i in kept} for u, kept in rest.items() if kept and str(u) in users}
    ndcg = {}
    for method in USER_METHODS:
        method_cfg = dataclasses.replace(cfg, coldstart=dataclasses.replace(cfg.coldstart, users=method))
        recs = score.build_recommendations(spark, method_cfg, snap, model_dir).where(F.col("rank") <= K_USERS)
        pdf = recs.select("user_key", "rank", "item_key", "reason").toPandas()
        print(f"{method}: reasons of held-out users {pdf[pdf['user_key'].map(users).isin(truth)].groupby('reason')['user_key'].nunique().to_dict()}")
        pdf = pdf.sort_values(["user_key", "rank"])
        lists = {users[k]: [items[i] for i in g["item_key"]] for k, g in pdf.groupby("user_key")}
        ndcg[method] = float(np.mean([ndcg_at_k(lists.get(u, []), rel, K_USERS) for u, rel in truth.items()]))
    examples = snap.read(spark, cfg, tables.SERVING_EXAMPLES)
    catalogue = score.catalogue(spark, cfg, snap)
    pop = score.in_catalogue(score.popularity_model(examples, max(truth) + 1, int(catalogue.max()) + 1), catalogue)
    wanted = spark.createDataFrame([(u,) for u in sorted(truth)], "user_idx int")
    seen = wanted.join(score.seen_items(snap.read(spark, cfg, tables.SILVER_INTERACTIONS), SPLITS), "user_idx", "left")
    lists = _lists(score.score_users(seen, pop, f"popularity-{uuid.uuid4().hex}", K_USERS, cfg.score.block_size,
                                     cfg.score.threads_per_worker))
    ndcg["popularity"] = float(np.mean([ndcg_at_k(lists.get(u, []), rel, K_USERS) for u, rel in truth.items()]))
    return ndcg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="a MovieLens-latest folder (default ml-latest-small)")
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. train.epochs=1 (a smoke run)")
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    cold_ratings, held_items, cold_users, cold_items = split_source(args.source, OUT / "source")
    cfg = load_config("local", overrides=[
        f"warehouse={OUT / 'warehouse'}", f"models_dir={OUT / 'models'}", f"source.path={OUT / 'source' / 'A'}",
        "features.split=temporal_user", "features.test_fraction=0.2", "nightly.backtest_every=0",
        f"score.top_n={K_ITEMS}", *args.set,
    ])
    spark = build_spark(cfg)
    started = time.time()
    for stage in (ingest.run, features.run, embed.run):
        stage(spark, cfg, DS)
    model_dir = models_root(cfg) / train.run(spark, cfg, DS)["serving"]["model_version"]
    recall = item_recall(spark, cfg, Snapshot.load(spark, cfg, DS), model_dir, held_items)

    night_b = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, path=str(OUT / "source" / "B")))
    ingest.run(spark, night_b, DS)
    features.run(spark, night_b, DS)
    segment.run(spark, night_b, DS, model_dir=model_dir)
    ndcg = user_ndcg(spark, night_b, Snapshot.load(spark, night_b, DS), model_dir, cold_ratings)
    seconds = time.time() - started

    load = os.getloadavg()
    machine = f"{os.cpu_count()} cores, {platform.machine()}, load avg {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    text = "\n".join([
        f"Command: `make bench-quality` (`bench/bench_coldstart.py`). Machine: {machine}. Date: {time.strftime('%Y-%m-%d')}. "
        f"Run {seconds:.0f}s. ml-latest-small, seed {SEED}: {len(cold_users)} users and {len(cold_items)} items held out of training.",
        "",
        f"**Cold users** (each given their first {GIVEN} ratings by time; ndcg@{K_USERS} on the rest, whole catalogue):",
        "", "| method | ndcg@10 |", "|---|---|",
        *[f"| {m}{' (default)' if m == cfg.coldstart.users else ''} | {v:.4f} |" for m, v in ndcg.items()],
        "",
        f"**Cold items** (their ratings by training users ranked among all items; recall@{K_ITEMS}, training items masked):",
        "", "| item vectors | recall@100 |", "|---|---|",
        f"| content (ridge, `coldstart.content_l2={cfg.coldstart.content_l2:g}`) | {recall['content']:.4f} |",
        f"| random (a random warm item's) | {recall['random']:.4f} |",
    ])
    if args.source == SOURCE and not args.set:
        write_section(text, "coldstart", "Cold start")
    print(text)
    print(f"coldstart users ndcg@10 lakerec={ndcg[cfg.coldstart.users]:.4f} popularity={ndcg['popularity']:.4f}")
    print(f"coldstart items recall@100 lakerec={recall['content']:.4f} random={recall['random']:.4f}")
    spark.stop()


if __name__ == "__main__":
    main()
