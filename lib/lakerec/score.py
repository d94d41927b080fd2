"""Nightly scorer: blocked top-N in an Arrow UDF -> staging -> publish gate -> serving.recommendations.

For a block of users: scores = U_block @ V.T + b (one torch matmul into a reused buffer), seen items
set to -inf, ``topk``. Each user's training items arrive as one array column (no row explosion) and
are read straight from Arrow offsets, so no Python code runs per user. Item factors travel once per
executor as a broadcast; the tensors and the score buffer are built once per Python worker. Memory
per worker is ``score.block_size`` x catalogue floats plus the factors, never tied to the user count.
"""
from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pyspark.broadcast import Broadcast
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakerec import coldstart, faults, tables
from lakerec.config import Config
from lakerec.features import SPLITS, TRAIN
from lakerec.models import FactorModel, top_n_block
from lakerec.model_store import FACTORS_FILE, META_FILE, SERVING, resolved_train
from lakerec.snapshot import Snapshot, checked_ds, previous_ds

log = logging.getLogger(__name__)

# serving/recommendations.reason: the path that served each user.
MODEL_REASON = "model"
FOLD_IN_REASON, SEGMENT_REASON, BLEND_REASON = coldstart.FOLD_IN_REASON, coldstart.SEGMENT_REASON, coldstart.BLEND_REASON
FALLBACK_REASON = coldstart.POPULARITY_REASON
SCORED_SCHEMA = "user_idx int, rank int, item_idx int, score float"
_SCORED_ARROW = pa.schema([("user_idx", pa.int32()), ("rank", pa.int32()), ("item_idx", pa.int32()), ("score", pa.float32())])


class PublishGateError(RuntimeError):
    """The staged recommendations failed a check; serving keeps the previous output."""


class _WorkerModel:
    """Model tensors and the score buffer of one Python worker, built once and reused by every batch."""

    key: str | None = None
    user_factors: torch.Tensor
    item_factors: torch.Tensor
    item_bias: torch.Tensor
    buffer: torch.Tensor

    @classmethod
    def get(cls, key: str, broadcast: Broadcast, block_size: int) -> type["_WorkerModel"]:
        """The worker's tensors for ``key``, unpickling the broadcast only the first time."""
        if cls.key != key:
            model: FactorModel = broadcast.value
            cls.user_factors = torch.from_numpy(np.ascontiguousarray(model.user_factors, dtype=np.float32))
            cls.item_factors = torch.from_numpy(np.ascontiguousarray(model.item_factors, dtype=np.float32))
            cls.item_bias = torch.from_numpy(np.ascontiguousarray(model.item_bias, dtype=np.float32))
            cls.buffer = torch.empty(0)
            cls.key = key
        if cls.buffer.shape != (block_size, cls.item_factors.shape[0]):
            cls.buffer = torch.empty(block_size, cls.item_factors.shape[0])
        return cls


def _seen_csr(seen: pa.Array, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, items) of an Arrow list column, nulls as empty lists, items unknown to the model dropped."""
    lengths = pc.fill_null(pc.list_value_length(seen), 0).to_numpy().astype(np.int64)
    items = seen.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    known = items < n_items  # items added after training are not in the model
    if not known.all():
        rows = np.repeat(np.arange(len(lengths)), lengths)
        lengths = np.bincount(rows[known], minlength=len(lengths))
        items = items[known]
    return lengths, items


def _block_rows(user_idx: np.ndarray, values: np.ndarray, items: np.ndarray) -> pa.RecordBatch:
    """Top-N rows of one block; ``-inf`` marks masked slots, NaN stays for the gate to catch."""
    keep = ~np.isneginf(values)
    if keep.all():
        per_user = np.full(len(user_idx), values.shape[1])
        ranks = np.tile(np.arange(1, values.shape[1] + 1, dtype=np.int32), len(user_idx))
    else:
        per_user = keep.sum(axis=1)
        ranks = np.cumsum(keep, axis=1, dtype=np.int32)[keep]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.repeat(user_idx.astype(np.int32), per_user)),
            pa.array(ranks),
            pa.array(items[keep].astype(np.int32)),
            pa.array(values[keep].astype(np.float32, copy=False)),
        ],
        schema=_SCORED_ARROW,
    )


def score_users(users: DataFrame, model: FactorModel, model_key: str, n: int, block_size: int, threads: int) -> DataFrame:
    """``users`` (user_idx int, seen array<int>) -> (user_idx, rank, item_idx, score) top-N rows."""
    broadcast = users.sparkSession.sparkContext.broadcast(model)

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        torch.set_num_threads(threads)
        worker = _WorkerModel.get(model_key, broadcast, block_size)
        n_items = worker.item_factors.shape[0]
        for batch in batches:
            user_idx = batch.column("user_idx").to_numpy().astype(np.int64)
            lengths, seen = _seen_csr(batch.column("seen"), n_items)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for start in range(0, len(user_idx), block_size):
                stop = min(start + block_size, len(user_idx))
                values, items = top_n_block(
                    worker.user_factors[torch.from_numpy(user_idx[start:stop])], worker.item_factors,
                    worker.item_bias, lengths[start:stop], seen[offsets[start] : offsets[stop]], n, worker.buffer,
                )
                yield _block_rows(user_idx[start:stop], values, items)

    return users.select("user_idx", "seen").mapInArrow(score_partition, SCORED_SCHEMA)


def seen_items(silver: DataFrame, splits: tuple[str, ...] = (TRAIN,)) -> DataFrame:
    """(user_idx, seen array<int>): each user's items in ``splits``, one row per user (no row explosion)."""
    rows = silver.where(F.col("split").isin(*splits))
    return rows.groupBy("user_idx").agg(F.collect_set("item_idx").alias("seen"))


def item_counts(examples: DataFrame, n_items: int) -> np.ndarray:
    """Positives per item_idx in ``examples`` (items below ``n_items``): catalogue-sized, never interaction-sized."""
    counts = np.zeros(n_items, np.float32)
    for r in examples.where(F.col("item_idx") < n_items).groupBy("item_idx").count().collect():
        counts[r["item_idx"]] = r["count"]
    return counts


def popularity_model(examples: DataFrame, n_users: int, n_items: int) -> FactorModel:
    """The popularity fallback as a FactorModel: item bias = log(1 + positives in ``examples``)."""
    return FactorModel.popularity(n_users, item_counts(examples, n_items))


def in_catalogue(model: FactorModel, catalogue: np.ndarray) -> FactorModel:
    """``model`` ranking only the night's catalogue (item_idx in ``catalogue``): the others score -inf,
    so a backfilled night never lists an item that had not arrived by its end."""
    bias = np.full(model.item_factors.shape[0], -np.inf, np.float32)
    known = catalogue[catalogue < len(bias)]
    bias[known] = model.item_bias[known]
    return FactorModel(model.user_factors, model.item_factors, bias)


def catalogue(spark: SparkSession, cfg: Config, snap: Snapshot) -> np.ndarray:
    """item_idx of the night's catalogue: the items its snapshot has features for."""
    items = snap.read(spark, cfg, tables.ITEM_FEATURES).select("item_idx").toPandas()
    return items["item_idx"].to_numpy(np.int64)


def with_keys(spark: SparkSession, cfg: Config, snap: Snapshot, scored: DataFrame) -> DataFrame:
    """(user_idx, item_idx, ...) rows with their user_key and item_key, through ``snap``'s id maps."""
    users = snap.read(spark, cfg, tables.ID_MAP_USERS).select(F.col("idx").alias("user_idx"), F.col("key").alias("user_key"))
    items = snap.read(spark, cfg, tables.ID_MAP_ITEMS).select(F.col("idx").alias("item_idx"), F.col("key").alias("item_key"))
    return scored.join(users, "user_idx").join(F.broadcast(items), "item_idx")


def serving_factors(spark: SparkSession, cfg: Config, snap: Snapshot, model: FactorModel, counts: np.ndarray) -> FactorModel:
    """The serving model with content vectors for the items without positives (``coldstart.items``),
    new items included: one item row per ``counts`` row."""
    if not cfg.coldstart.items:
        return model
    content = coldstart.item_content(spark, cfg, snap, len(counts))
    return coldstart.with_content_items(model, content, counts > 0, cfg.coldstart.content_l2)


def _history_decay(cfg: Config, model_dir: Path) -> float:
    """The history decay the model trained with (its ``meta.json``), else what ``cfg`` would train with."""
    meta = model_dir / META_FILE
    trained = json.loads(meta.read_text()).get("train", {}) if meta.is_file() else {}
    return float(trained.get("history_decay", resolved_train(cfg).history_decay) or 0.0)


def _score_cold(spark: SparkSession, cfg: Config, cold: coldstart.ColdUsers, reasons: np.ndarray,
                model: FactorModel, seen: DataFrame) -> DataFrame:
    """Top-N rows of the cold users: their model's rows are positions, mapped back to user_idx here."""
    rows = spark.createDataFrame(
        pd.DataFrame({"row": np.arange(len(cold.user_idx), dtype=np.int32), "user_idx": cold.user_idx.astype(np.int32),
                      "reason": reasons.astype(str)}), "row int, user_idx int, reason string")
    users = rows.join(seen, "user_idx", "left").select(F.col("row").alias("user_idx"), "seen")
    sc = cfg.score
    scored = score_users(users, model, f"coldstart-{uuid.uuid4().hex}", sc.top_n, sc.block_size, sc.threads_per_worker)
    return scored.withColumnRenamed("user_idx", "row").join(rows, "row").drop("row")


def build_recommendations(spark: SparkSession, cfg: Config, snap: Snapshot, model_dir: Path) -> DataFrame:
    """Every user of the night's top-N from its catalogue; no list holds an item the user already has.

    The model serves the users it has a vector for (positives tonight, more than
    ``coldstart.light_user_positives``); the others go to :mod:`lakerec.coldstart` (fold-in, segment, blend,
    popularity for users with nothing). Cold items take content vectors when ``coldstart.items``.
    """
    examples = snap.read(spark, cfg, tables.SERVING_EXAMPLES)
    items = catalogue(spark, cfg, snap)
    model = FactorModel.load(model_dir / FACTORS_FILE)
    n_items = model.item_factors.shape[0]
    if cfg.coldstart.items:  # items newer than the model get rows too
        n_items = max(n_items, int(items.max(initial=-1)) + 1)
    counts = item_counts(examples, n_items)
    model = serving_factors(spark, cfg, snap, model, counts)
    items = items[items < n_items]
    n = model.user_factors.shape[0]
    seen = seen_items(snap.read(spark, cfg, tables.SILVER_INTERACTIONS), SPLITS)
    positives = examples.groupBy("user_idx").agg(F.count("*").alias("positives"))
    warm = positives.where((F.col("user_idx") < n) & (F.col("positives") > cfg.coldstart.light_user_positives))
    sc = cfg.score
    scored = score_users(seen.join(warm.select("user_idx"), "user_idx"), in_catalogue(model, items),
                         f"{model_dir.name}-{uuid.uuid4().hex}", sc.top_n, sc.block_size, sc.threads_per_worker)
    scored = scored.withColumn("reason", F.lit(MODEL_REASON))

    segments = coldstart.night_segments(spark, cfg, snap.ds)
    segment_ids, segment_counts = coldstart.segment_item_counts(examples, segments, n_items)
    night_users = snap.read(spark, cfg, tables.USER_FEATURES).select("user_idx")
    cold = coldstart.cold_users(night_users.join(warm, "user_idx", "left_anti"), examples, segments, segment_ids)
    reasons = cold.reasons(cfg.coldstart.users)
    cold_model = coldstart.cold_user_model(model, cold, reasons, segment_counts, counts, items,
                                           _history_decay(cfg, model_dir), cfg.coldstart.blend_weight)
    cold_scored = _score_cold(spark, cfg, cold, reasons, in_catalogue(cold_model, items), seen)
    recs = with_keys(spark, cfg, snap, scored.unionByName(cold_scored))
    return recs.select(
        F.lit(snap.ds).alias("ds"), "user_key", "rank", "item_key", "score",
        F.lit(model_dir.name).alias("model_version"), "reason",
    )


def _flag(condition: Column) -> Column:
    """How many rows meet ``condition``, as an aggregate: the gate takes every count of a frame in one action."""
    return F.sum(F.when(condition, 1).otherwise(0))


def gate_failures(spark: SparkSession, cfg: Config, staged: DataFrame, snap: Snapshot) -> list[str]:
    """Checks the staged recommendations must pass before publishing; returns what failed.

    Two Spark actions, one per user and one per row: on a small night each action costs more than its rows.
    """
    n, ds = cfg.score.top_n, snap.ds
    items = snap.read(spark, cfg, tables.ITEM_FEATURES).select("item_key")
    n_items = items.count()
    users = snap.read(spark, cfg, tables.USER_FEATURES).select("user_key", "user_idx")
    seen_pairs = snap.read(spark, cfg, tables.SILVER_INTERACTIONS).select("user_idx", "item_idx").distinct()
    # Each user is owed min(N, unseen items): someone who has seen nearly the whole catalogue gets fewer.
    owed = users.join(seen_pairs.groupBy("user_idx").agg(F.count("*").alias("n_seen")), "user_idx", "left").select(
        "user_key", F.least(F.lit(n), F.lit(n_items) - F.coalesce("n_seen", F.lit(0))).alias("owed")
    )
    per_user = staged.groupBy("user_key").agg(
        F.count("*").alias("rows"), F.countDistinct("rank").alias("ranks"),
        F.countDistinct("item_key").alias("items"), F.max("rank").alias("max_rank"),
    )
    checked = owed.join(per_user, "user_key", "full_outer").fillna(0, ["rows", "ranks", "items", "max_rank"])
    by_user = checked.agg(
        _flag(F.col("owed").isNull() | (F.col("rows") == 0)).alias("missing"),
        _flag((F.col("rows") > 0) & ((F.col("rows") != F.col("owed")) | (F.col("ranks") != F.col("rows"))
                                     | (F.col("items") != F.col("rows")) | (F.col("max_rank") != F.col("rows")))
              ).alias("bad"),
    ).first()
    seen = with_keys(spark, cfg, snap, seen_pairs).select("user_key", "item_key", F.lit(True).alias("seen"))
    known = items.distinct().select("item_key", F.lit(True).alias("known"))
    rows = staged.join(seen, ["user_key", "item_key"], "left").join(known, "item_key", "left")
    by_row = rows.agg(
        _flag(F.expr(" OR ".join(f"{c} IS NULL" for c in staged.columns))).alias("nulls"),
        _flag(F.isnan("score") | F.col("score").isin(float("inf"), float("-inf"))).alias("non_finite"),
        _flag(F.col("seen").isNotNull()).alias("seen"),
        _flag(F.col("known").isNull()).alias("unknown"),
        F.countDistinct("item_key").alias("coverage"),
    ).first()
    failures = [message for count, message in (
        (by_user["missing"], "users are missing from the recommendations or unknown to the night's users"),
        (by_user["bad"], f"users do not have exactly min({n}, unseen items) distinct items ranked 1..N"),
        (by_row["nulls"], "rows have nulls"),
        (by_row["non_finite"], "rows have non-finite scores"),
        (by_row["seen"], "recommendations are items the user already has"),
        (by_row["unknown"], f"recommendations are items outside the catalogue of {ds}"),
    ) for message in ([f"{count} {message}"] if count else [])]
    return failures + _coverage_failures(spark, cfg, by_row["coverage"], ds)


def _coverage_failures(spark: SparkSession, cfg: Config, coverage: int, ds: str) -> list[str]:
    """Distinct items recommended (``coverage``) must not collapse below ``score.min_coverage_ratio`` of the
    previous night's."""
    last_ds = previous_ds(spark, cfg, tables.RECOMMENDATIONS, ds) if cfg.score.min_coverage_ratio > 0 else None
    if last_ds is None:
        return []
    previous = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == last_ds)
    prev_cov = previous.select("item_key").distinct().count()
    if coverage >= cfg.score.min_coverage_ratio * prev_cov:
        return []
    return [f"catalogue coverage {coverage} items is below {cfg.score.min_coverage_ratio:.0%} of "
            f"{prev_cov} on {last_ds} (score.min_coverage_ratio)"]


@faults.job("score")
def run(spark: SparkSession, cfg: Config, ds: str, model_dir: Path | None = None) -> dict:
    """Score every user of ``ds`` with that night's serving model and publish, or fail leaving serving untouched."""
    snap = Snapshot.load(spark, cfg, ds)
    model_dir = model_dir or snap.model_dir(cfg, SERVING)
    recs = build_recommendations(spark, cfg, snap, model_dir)
    # Gate and publish exactly the version this run staged: another run may overwrite staging meanwhile.
    run_tag = f"score ds={ds} {uuid.uuid4().hex}"
    tables.overwrite(recs, cfg, tables.STAGING_RECOMMENDATIONS, tag=run_tag)
    staged_version = tables.tagged_version(spark, cfg, tables.STAGING_RECOMMENDATIONS, run_tag)
    staged = tables.read(spark, cfg, tables.STAGING_RECOMMENDATIONS, staged_version)
    failures = gate_failures(spark, cfg, staged, snap)
    if failures:
        raise PublishGateError(
            f"not publishing ds={ds} from {model_dir.name}: " + "; ".join(failures)
            + f". Serving keeps its previous output; the rejected rows are in {tables.STAGING_RECOMMENDATIONS.path(cfg)}"
            + f" at version {staged_version}"
        )
    tables.replace_where(staged, cfg, tables.RECOMMENDATIONS, tables.equals(ds=checked_ds(ds)))
    by_reason = staged.groupBy("reason").agg(F.count("*").alias("rows"),
                                             F.countDistinct("user_key").alias("users")).collect()
    summary = {
        "ds": ds,
        "model_version": model_dir.name,
        "rows": sum(r["rows"] for r in by_reason),
        "users_by_reason": {r["reason"]: r["users"] for r in by_reason},
    }
    log.info("score %s: %s", ds, summary)
    return summary
