"""The feedback loop: how the lists served last night did against what users did since.

For night ``ds`` the truth is the positives that arrived in ``ds``'s drop (bronze rows ingested on
``ds``) with event times after the end of the previous night and not after the end of ``ds``,
less what each user already had by the previous night (a list never holds those). Only returning
users count: those who were served a list and did something since. The popularity list of the
previous night, built from the same snapshot with the same masking, is the counterfactual.
"""
from __future__ import annotations

import logging
import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakerec import tables
from lakerec.config import Config
from lakerec.features import SPLITS, label_column
from lakerec.metrics_spark import ranking_metrics
from lakerec.score import catalogue, in_catalogue, popularity_model, score_users, seen_items, with_keys
from lakerec.snapshot import Snapshot, end_of_day, previous_ds

log = logging.getLogger(__name__)

SERVED = "served"  # serving.metrics.model of the served lists
SERVED_POPULARITY = "served_popularity"  # ... and of the popularity list the same users would have had
FEEDBACK_METRICS = ("hit_rate", "recall", "ndcg")
Row = tuple[str, str, str, int, float]  # (model_version, model, metric, k, value)


def arrivals(spark: SparkSession, cfg: Config, previous: str, ds: str) -> DataFrame:
    """(user_key, item_key) positives of ``ds``'s drop that happened after the end of ``previous``."""
    bronze = tables.read(spark, cfg, tables.BRONZE_INTERACTIONS).where(F.col("ingest_ds") == ds)
    after = F.col("ts").isNull() | ((F.col("ts") >= end_of_day(previous)) & (F.col("ts") < end_of_day(ds)))
    positive = label_column(cfg.features) > 0
    return bronze.where(after & positive).select("user_key", "item_key").distinct()


def next_day_truth(spark: SparkSession, cfg: Config, previous: Snapshot, ds: str) -> DataFrame:
    """(user_key, item_key) that arrived for ``ds``, less what each user had by ``previous``."""
    pairs = previous.read(spark, cfg, tables.SILVER_INTERACTIONS).select("user_idx", "item_idx")
    had = with_keys(spark, cfg, previous, pairs).drop("user_idx", "item_idx")
    return arrivals(spark, cfg, previous.ds, ds).join(had, ["user_key", "item_key"], "left_anti")


def list_metrics(lists: DataFrame, truth: DataFrame, ks: list[int]) -> list[tuple[str, int, float]]:
    """(metric, k, value) of ``lists`` (user_key, item_key, rank) against ``truth`` (user_key, item_key)
    over the users in both: the returning users."""
    truth = truth.join(lists.select("user_key").distinct(), "user_key", "left_semi").cache()
    out: list[tuple[str, int, float]] = [("returning_users", 0, float(truth.select("user_key").distinct().count()))]
    for k, values in ranking_metrics(lists, truth, ks, col_user="user_key", col_item="item_key").items():
        out += [(m, k, values[m]) for m in FEEDBACK_METRICS]
    truth.unpersist()
    return out


def popularity_lists(spark: SparkSession, cfg: Config, snap: Snapshot, user_keys: DataFrame, n: int) -> DataFrame:
    """(user_key, item_key, rank): the popularity list ``snap``'s night would have given ``user_keys``."""
    users = snap.read(spark, cfg, tables.ID_MAP_USERS).select(F.col("idx").alias("user_idx"), F.col("key").alias("user_key"))
    items = snap.read(spark, cfg, tables.ID_MAP_ITEMS)
    n_users, n_items = users.count(), items.count()
    wanted = users.join(user_keys, "user_key", "left_semi").select("user_idx")
    seen = wanted.join(seen_items(snap.read(spark, cfg, tables.SILVER_INTERACTIONS), SPLITS), "user_idx", "left")
    pop = popularity_model(snap.read(spark, cfg, tables.SERVING_EXAMPLES), n_users, n_items)
    pop = in_catalogue(pop, catalogue(spark, cfg, snap))
    ranked = score_users(seen, pop, f"popularity-{uuid.uuid4().hex}", n, cfg.score.block_size, cfg.score.threads_per_worker)
    return with_keys(spark, cfg, snap, ranked.select("user_idx", "item_idx", "rank")).drop("user_idx", "item_idx")


def next_day_metrics(spark: SparkSession, cfg: Config, lists: DataFrame, ds: str, k: int = 10) -> dict[str, float]:
    """Metrics@k of ``lists`` (ds, user_key, item_key, rank: one night's lists) against what arrived for ``ds``."""
    previous = Snapshot.load(spark, cfg, lists.agg(F.max("ds")).first()[0])
    rows = list_metrics(lists, next_day_truth(spark, cfg, previous, ds), [k])
    return {m: v for m, _, v in rows}


def served_rows(spark: SparkSession, cfg: Config, snap: Snapshot) -> list[Row]:
    """Rows for serving.metrics: last night's served lists and the popularity counterfactual, scored
    against ``snap``'s night; none on the first night."""
    previous_night = previous_ds(spark, cfg, tables.RECOMMENDATIONS, snap.ds)
    if previous_night is None:
        log.info("feedback %s: no earlier night was served", snap.ds)
        return []
    try:
        previous = Snapshot.load(spark, cfg, previous_night)
    except RuntimeError:  # lists served before manifests existed (an older lakerec): nothing to mask them with
        log.warning("feedback %s: the lists of %s have no feature snapshot; skipped", snap.ds, previous_night)
        return []
    served = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == previous_night).cache()
    version = served.select("model_version").first()["model_version"]
    truth = next_day_truth(spark, cfg, previous, snap.ds).cache()
    ks = [k for k in sorted(set(cfg.evaluate.k)) if k <= cfg.score.top_n] or [cfg.score.top_n]
    rows = [(version, SERVED, m, k, v) for m, k, v in list_metrics(served, truth, ks)]
    returning = truth.select("user_key").distinct().join(served.select("user_key").distinct(), "user_key", "left_semi")
    pop = popularity_lists(spark, cfg, previous, returning, max(ks))
    rows += [(version, SERVED_POPULARITY, m, k, v) for m, k, v in list_metrics(pop, truth, ks)]
    served.unpersist()
    truth.unpersist()
    log.info("feedback %s: lists served on %s, %s", snap.ds, previous_night,
             {(name, m, k): round(v, 4) for _, name, m, k, v in rows if k == ks[0] or k == 0})
    return rows
