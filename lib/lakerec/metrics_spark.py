"""Metrics in Spark: what the evaluation job computes, each beside its pure-Python twin in :mod:`lakerec.metrics`.

Same definitions as the twins (binary relevance, averages over users with relevant items, MAP@K
divided by min(|relevant|, K)); tests hold each pair to the same numbers on the same data. Lists are
(user_idx, item_idx, rank) rows, rank 1 best; other column names plug in through ``col_*`` keywords.
Each metric takes every cut-off at once and computes them in one Spark action: on small nights an
evaluation's time is the number of actions, and one action per (metric, k) came to about 45.
"""
from __future__ import annotations

import math
from typing import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from lakerec.tables import ITEM_IDX, PREDICTION, RANK, RATING, USER_IDX

METRIC_NAMES = ("precision", "recall", "ndcg", "map", "hit_rate")


def _cutoffs(ks: Sequence[int]) -> list[int]:
    """The distinct cut-offs, ascending; all of them are computed in one pass."""
    if not ks or min(ks) < 1:
        raise ValueError(f"metric cut-offs must be >= 1, got {list(ks)}")
    return sorted(set(ks))


def ranking_metrics(
    recs: DataFrame, truth: DataFrame, ks: Sequence[int],
    col_user: str = USER_IDX, col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> dict[int, dict[str, float]]:
    """Mean metrics at each k over users in ``truth`` (user, item), by k, in one Spark action; twin of
    :func:`lakerec.metrics.mean_ranking_metrics`."""
    ks = _cutoffs(ks)
    rank = F.col(col_rank)
    truth = truth.select(col_user, col_item).distinct()
    n_rel = truth.groupBy(col_user).agg(F.count("*").alias("n_rel"))
    hits = recs.where(rank <= ks[-1]).join(truth, [col_user, col_item])
    # A hit's number among the user's hits is the same under every cut-off that keeps it.
    hits = hits.withColumn("hit_no", F.row_number().over(Window.partitionBy(col_user).orderBy(col_rank)))
    sums = []
    for k in ks:
        inside = rank <= k
        sums += [F.count(F.when(inside, 1)).alias(f"hits_{k}"),
                 F.sum(F.when(inside, 1.0 / F.log2(rank + 1))).alias(f"dcg_{k}"),
                 F.sum(F.when(inside, F.col("hit_no") / rank)).alias(f"ap_sum_{k}")]
    per_user = n_rel.join(hits.groupBy(col_user).agg(*sums), col_user, "left").fillna(0)
    ideal = F.array(*[F.lit(sum(1.0 / math.log2(r + 1) for r in range(1, i + 1))) for i in range(1, ks[-1] + 1)])
    means = []
    for k in ks:
        found, capped = F.col(f"hits_{k}"), F.least(F.col("n_rel"), F.lit(k))
        means += [F.avg(found / k).alias(f"precision_{k}"),
                  F.avg(found / F.col("n_rel")).alias(f"recall_{k}"),
                  F.avg(F.col(f"dcg_{k}") / F.element_at(ideal, capped.cast("int"))).alias(f"ndcg_{k}"),
                  F.avg(F.col(f"ap_sum_{k}") / capped).alias(f"map_{k}"),
                  F.avg((found > 0).cast("double")).alias(f"hit_rate_{k}")]
    row = per_user.agg(*means).first()
    return {k: {m: float(row[f"{m}_{k}"] or 0.0) for m in METRIC_NAMES} for k in ks}


def catalogue_coverage(
    recs: DataFrame, n_items: int, ks: Sequence[int], col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> dict[int, float]:
    """Distinct items in anyone's top-k over the catalogue size, by k, in one Spark action; twin of
    :func:`lakerec.metrics.catalogue_coverage`."""
    ks = _cutoffs(ks)
    best = recs.where(F.col(col_rank) <= ks[-1]).groupBy(col_item).agg(F.min(col_rank).alias("best"))
    row = best.agg(*[F.count(F.when(F.col("best") <= k, 1)).alias(f"items_{k}") for k in ks]).first()
    return {k: row[f"items_{k}"] / max(n_items, 1) for k in ks}


def novelty(
    recs: DataFrame, item_counts: DataFrame, ks: Sequence[int], col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> dict[int, float]:
    """Mean ``-log2(count_i / total)`` over top-k (user, item) pairs, by k; twin of :func:`lakerec.metrics.novelty`.

    item_counts: (item, count) training interactions; an item absent there counts as seen once.
    """
    ks = _cutoffs(ks)
    total = item_counts.agg(F.sum("count")).first()[0]
    if not total:
        return {k: 0.0 for k in ks}
    top = recs.where(F.col(col_rank) <= ks[-1]).join(F.broadcast(item_counts), col_item, "left")
    info = -F.log2(F.greatest(F.coalesce(F.col("count"), F.lit(0)), F.lit(1)) / F.lit(float(total)))
    row = top.agg(*[F.avg(F.when(F.col(col_rank) <= k, info)).alias(f"novelty_{k}") for k in ks]).first()
    return {k: float(row[f"novelty_{k}"] or 0.0) for k in ks}


def intra_list_diversity(
    recs: DataFrame, item_genres: DataFrame, ks: Sequence[int],
    col_user: str = USER_IDX, col_item: str = ITEM_IDX, col_rank: str = RANK,
) -> dict[int, float]:
    """Mean pairwise cosine distance of genre vectors in a top-k, by k, in one Spark action; twin of
    :func:`lakerec.metrics.intra_list_diversity`.

    item_genres: (item, genre_vector array<float>). Items without genres are left out; users left
    with fewer than two items do not count. With unit vectors u_i and S = sum u_i, the sum of
    similarities over ordered pairs i != j is |S|^2 - n, so no pairwise join is needed: each user's list
    is gathered into one row and S summed there, per cut-off, with array functions.
    """
    ks = _cutoffs(ks)
    rank = F.col(col_rank)
    norm = F.sqrt(F.aggregate("genre_vector", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    # CASE WHEN, not a filter: the optimiser may evaluate the division before a filter on norm > 0.
    unit = item_genres.select(col_item, norm.alias("norm"), "genre_vector").select(
        col_item, F.when(F.col("norm") > 0, F.transform("genre_vector", lambda x: x / F.col("norm"))).alias("u")
    ).where(F.col("u").isNotNull())
    top = recs.where(rank <= ks[-1]).join(F.broadcast(unit), col_item)
    lists = top.groupBy(col_user).agg(F.collect_list(F.struct(rank.alias("r"), F.col("u"))).alias("items"))
    zero = F.array_repeat(F.lit(0.0), F.size(F.col("items")[0]["u"]))
    ild = {}
    for k in ks:
        kept = F.filter("items", lambda item: item["r"] <= k)
        n = F.size(kept)
        total = F.aggregate(kept, zero, lambda acc, item: F.zip_with(acc, item["u"], lambda a, b: a + b))
        squared = F.aggregate(total, F.lit(0.0), lambda acc, x: acc + x * x)
        ild[k] = F.when(n >= 2, 1.0 - (squared - n) / (n * (n - 1)))
    row = lists.agg(*[F.avg(ild[k]).alias(f"ild_{k}") for k in ks]).first()
    return {k: float(row[f"ild_{k}"] or 0.0) for k in ks}


def rating_errors(
    predictions: DataFrame, col_prediction: str = PREDICTION, col_rating: str = RATING,
) -> dict[str, float]:
    """RMSE and MAE over (prediction, rating) rows; twin of :func:`lakerec.metrics.rmse` and ``mae``."""
    err = F.col(col_prediction) - F.col(col_rating)
    row = predictions.agg(F.sqrt(F.avg(err * err)).alias("rmse"), F.avg(F.abs(err)).alias("mae")).first()
    return {"rmse": float(row["rmse"] or 0.0), "mae": float(row["mae"] or 0.0)}
