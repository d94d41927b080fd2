"""Metrics in Spark: what the evaluation job computes, each beside its pure-Python twin in :mod:`lakerec.metrics`.

Same definitions as the twins (binary relevance, averages over users with relevant items, MAP@K
divided by min(|relevant|, K)); tests hold each pair to the same numbers on the same data. Lists are
(user_idx, item_idx, rank) rows, rank 1 best; other column names plug in through ``col_*`` keywords.
"""
from __future__ import annotations

import math

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from lakerec.tables import ITEM_IDX, PREDICTION, RANK, RATING, USER_IDX

METRIC_NAMES = ("precision", "recall", "ndcg", "map", "hit_rate")


def ranking_metrics(
    recs: DataFrame, truth: DataFrame, k: int,
    col_user: str = USER_IDX, col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> dict[str, float]:
    """Mean metrics@k over users in ``truth`` (user, item); twin of :func:`lakerec.metrics.mean_ranking_metrics`."""
    truth = truth.select(col_user, col_item).distinct()
    n_rel = truth.groupBy(col_user).agg(F.count("*").alias("n_rel"))
    hits = recs.where(F.col(col_rank) <= k).join(truth, [col_user, col_item])
    hits = hits.withColumn("hit_no", F.row_number().over(Window.partitionBy(col_user).orderBy(col_rank)))
    per_user_hits = hits.groupBy(col_user).agg(
        F.count("*").alias("hits"),
        F.sum(1.0 / F.log2(F.col(col_rank) + 1)).alias("dcg"),
        F.sum(F.col("hit_no") / F.col(col_rank)).alias("ap_sum"),
    )
    ideal = F.array(*[F.lit(sum(1.0 / math.log2(r + 1) for r in range(1, i + 1))) for i in range(1, k + 1)])
    per_user = n_rel.join(per_user_hits, col_user, "left").fillna(0, ["hits", "dcg", "ap_sum"])
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


def catalogue_coverage(
    recs: DataFrame, n_items: int, k: int, col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> float:
    """Distinct items in anyone's top-k over the catalogue size; twin of :func:`lakerec.metrics.catalogue_coverage`."""
    return recs.where(F.col(col_rank) <= k).select(col_item).distinct().count() / max(n_items, 1)


def novelty(
    recs: DataFrame, item_counts: DataFrame, k: int, col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> float:
    """Mean ``-log2(count_i / total)`` over top-k (user, item) pairs; twin of :func:`lakerec.metrics.novelty`.

    item_counts: (item, count) training interactions; an item absent there counts as seen once.
    """
    total = item_counts.agg(F.sum("count")).first()[0]
    if not total:
        return 0.0
    top = recs.where(F.col(col_rank) <= k).join(F.broadcast(item_counts), col_item, "left")
    info = -F.log2(F.greatest(F.coalesce(F.col("count"), F.lit(0)), F.lit(1)) / F.lit(float(total)))
    return float(top.agg(F.avg(info)).first()[0] or 0.0)


def intra_list_diversity(
    recs: DataFrame, item_genres: DataFrame, k: int,
    col_user: str = USER_IDX, col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> float:
    """Mean pairwise cosine distance of genre vectors in a top-k; twin of :func:`lakerec.metrics.intra_list_diversity`.

    item_genres: (item, genre_vector array<float>). Items without genres are left out; users left
    with fewer than two items do not count. With unit vectors u_i and S = sum u_i, the sum of
    similarities over ordered pairs i != j is |S|^2 - n, so no pairwise join is needed.
    """
    norm = F.sqrt(F.aggregate("genre_vector", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    # CASE WHEN, not a filter: the optimiser may evaluate the division before a filter on norm > 0.
    unit = item_genres.select(col_item, norm.alias("norm"), "genre_vector").select(
        col_item, F.when(F.col("norm") > 0, F.transform("genre_vector", lambda x: x / F.col("norm"))).alias("u")
    ).where(F.col("u").isNotNull())
    top = recs.where(F.col(col_rank) <= k).join(F.broadcast(unit), col_item)
    n = top.groupBy(col_user).agg(F.count("*").alias("n")).where(F.col("n") >= 2)
    sums = top.select(col_user, F.posexplode("u").alias("pos", "x")).groupBy(col_user, "pos").agg(F.sum("x").alias("s"))
    squared = sums.groupBy(col_user).agg(F.sum(F.col("s") * F.col("s")).alias("ss"))
    per_user = n.join(squared, col_user).select(
        (1.0 - (F.col("ss") - F.col("n")) / (F.col("n") * (F.col("n") - 1))).alias("ild")
    )
    return float(per_user.agg(F.avg("ild")).first()[0] or 0.0)


def rating_errors(
    predictions: DataFrame, col_prediction: str = PREDICTION, col_rating: str = RATING,
) -> dict[str, float]:
    """RMSE and MAE over (prediction, rating) rows; twin of :func:`lakerec.metrics.rmse` and ``mae``."""
    err = F.col(col_prediction) - F.col(col_rating)
    row = predictions.agg(F.sqrt(F.avg(err * err)).alias("rmse"), F.avg(F.abs(err)).alias("mae")).first()
    return {"rmse": float(row["rmse"] or 0.0), "mae": float(row["mae"] or 0.0)}
