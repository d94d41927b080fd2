"""Evaluate: ranking metrics on the test split for the published model and the popularity baseline.

Full ranking: every item not seen in training competes, no sampled negatives. The Spark metric
code here has pure-Python twins in :mod:`lakerec.metrics`; tests hold them to the same numbers.
"""
from __future__ import annotations

import logging
import math

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import tables
from lakerec.config import Config
from lakerec.features import TEST
from lakerec.score import popularity_model, score_users, seen_items

log = logging.getLogger(__name__)

METRIC_NAMES = ("precision", "recall", "ndcg", "map", "hit_rate")


def ranking_metrics(recs: DataFrame, truth: DataFrame, k: int) -> dict[str, float]:
    """Mean metrics@k over users in ``truth``. recs: (user, item, rank); truth: (user, item)."""
    truth = truth.select("user", "item").distinct()
    n_rel = truth.groupBy("user").agg(F.count("*").alias("n_rel"))
    hits = recs.where(F.col("rank") <= k).join(truth, ["user", "item"])
    hits = hits.withColumn("hit_no", F.row_number().over(Window.partitionBy("user").orderBy("rank")))
    per_user_hits = hits.groupBy("user").agg(
        F.count("*").alias("hits"),
        F.sum(1.0 / F.log2(F.col("rank") + 1)).alias("dcg"),
        F.sum(F.col("hit_no") / F.col("rank")).alias("ap_sum"),
    )
    ideal = F.array(*[F.lit(sum(1.0 / math.log2(r + 1) for r in range(1, i + 1))) for i in range(1, k + 1)])
    per_user = n_rel.join(per_user_hits, "user", "left").fillna(0, ["hits", "dcg", "ap_sum"])
    capped = F.least(F.col("n_rel"), F.lit(k))
    per_user = per_user.select(
        (F.col("hits") / k).alias("precision"),
        (F.col("hits") / F.col("n_rel")).alias("recall"),
        (F.col("dcg") / F.element_at(ideal, capped.cast("int"))).alias("ndcg"),
        (F.col("ap_sum") / capped).alias("map"),
        (F.col("hits") > 0).cast("double").alias("hit_rate"),
    )
    row = per_user.agg(*[F.avg(m).alias(m) for m in METRIC_NAMES]).first()
    return {m: float(row[m] or 0.0) for m in METRIC_NAMES}


def test_truth(spark: SparkSession, cfg: Config) -> DataFrame:
    """(user, item) positives of the test split, by dense index."""
    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS)
    return silver.where((F.col("split") == TEST) & (F.col("label") > 0)).select(
        F.col("user_idx").alias("user"), F.col("item_idx").alias("item")
    )


def _published_recs(spark: SparkSession, cfg: Config, ds: str) -> tuple[DataFrame, str]:
    recs = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == ds)
    first = recs.select("model_version").first()
    if first is None:
        raise RuntimeError(f"no recommendations for ds={ds} in {tables.RECOMMENDATIONS.path(cfg)}: run the score job first")
    users = tables.read(spark, cfg, tables.ID_MAP_USERS).select(F.col("key").alias("user_key"), F.col("idx").alias("user"))
    items = tables.read(spark, cfg, tables.ID_MAP_ITEMS).select(F.col("key").alias("item_key"), F.col("idx").alias("item"))
    by_idx = recs.join(users, "user_key").join(F.broadcast(items), "item_key").select("user", "item", "rank")
    return by_idx, first["model_version"]


def run(spark: SparkSession, cfg: Config, ds: str) -> list[dict]:
    """Compute metrics for ``ds``, replace that ds in serving.metrics, and return the rows."""
    ks = sorted(set(cfg.evaluate.k))
    truth = test_truth(spark, cfg).cache()
    model_recs, model_version = _published_recs(spark, cfg, ds)

    n_users = tables.read(spark, cfg, tables.ID_MAP_USERS).count()
    n_items = tables.read(spark, cfg, tables.ID_MAP_ITEMS).count()
    users = seen_items(tables.read(spark, cfg, tables.SILVER_INTERACTIONS)).join(
        truth.select(F.col("user").alias("user_idx")).distinct(), "user_idx"
    )
    pop = popularity_model(spark, cfg, n_users, n_items)
    pop_recs = score_users(users, pop, f"popularity-{ds}", max(ks), cfg.score.block_size, cfg.score.threads_per_worker)
    pop_recs = pop_recs.select(F.col("user_idx").alias("user"), F.col("item_idx").alias("item"), "rank")

    rows = []
    for name, recs in (("model", model_recs), ("popularity", pop_recs)):
        recs = recs.cache()
        for k in ks:
            values = ranking_metrics(recs, truth, k)
            coverage = recs.where(F.col("rank") <= k).select("item").distinct().count() / max(n_items, 1)
            values["coverage"] = coverage
            rows += [
                {"ds": ds, "model_version": model_version, "model": name, "metric": m, "k": k, "value": float(v)}
                for m, v in values.items()
            ]
        recs.unpersist()
    truth.unpersist()
    df = spark.createDataFrame(rows, tables.METRICS.schema)
    tables.replace_where(df, cfg, tables.METRICS, f"ds = '{ds}'")
    log.info("evaluate %s: %d metric rows for %s", ds, len(rows), model_version)
    return rows


def format_table(rows: list[dict]) -> str:
    """A small text table: one line per (metric, k), one column per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["metric"], r["k"]) for r in rows))
    value = {(r["model"], r["metric"], r["k"]): r["value"] for r in rows}
    lines = [f"{'metric':<14}" + "".join(f"{m:>12}" for m in models)]
    for metric, k in keys:
        lines.append(f"{metric + '@' + str(k):<14}" + "".join(f"{value[(m, metric, k)]:>12.4f}" for m in models))
    return "\n".join(lines)
