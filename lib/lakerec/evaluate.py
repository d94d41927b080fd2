"""Evaluate: the published model beside in-product baselines on the same test split.

Full ranking: every item not seen in training competes, no sampled negatives. Baselines
(``evaluate.baselines``: popularity, ALS, EASE) are fitted on the same train split, tuned on the
validation split when there is one, and scored by the same masked top-N scorer as the model.
Every Spark metric here has a pure-Python twin in :mod:`lakerec.metrics`; tests hold them to the
same numbers. Rows go to serving.metrics as (ds, model_version, model, metric, k, value); metrics
without a cutoff (rmse, mae) have k = 0.
"""
from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import baselines, tables
from lakerec.config import Config, resolve_path
from lakerec.features import TEST, TRAIN, VALIDATION
from lakerec.models import FactorModel, RatingPredictor
from lakerec.score import popularity_model, score_users, seen_items
from lakerec.train import FACTORS_FILE, RATING_HEAD_FILE

log = logging.getLogger(__name__)

METRIC_NAMES = ("precision", "recall", "ndcg", "map", "hit_rate")
TUNING_K = 10


# ---------------------------------------------------------------- metrics in Spark

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


def catalogue_coverage(recs: DataFrame, n_items: int, k: int) -> float:
    """Distinct items in anyone's top-k over the catalogue size. recs: (user, item, rank)."""
    return recs.where(F.col("rank") <= k).select("item").distinct().count() / max(n_items, 1)


def novelty(recs: DataFrame, item_counts: DataFrame, k: int) -> float:
    """Mean ``-log2(count_i / total)`` over recommended (user, item) pairs in the top-k.

    item_counts: (item, count) training interactions; an item absent there counts as seen once.
    """
    total = item_counts.agg(F.sum("count")).first()[0]
    if not total:
        return 0.0
    top = recs.where(F.col("rank") <= k).join(F.broadcast(item_counts), "item", "left")
    info = -F.log2(F.greatest(F.coalesce(F.col("count"), F.lit(0)), F.lit(1)) / F.lit(float(total)))
    return float(top.agg(F.avg(info)).first()[0] or 0.0)


def intra_list_diversity(recs: DataFrame, item_genres: DataFrame, k: int) -> float:
    """Mean over users of the mean pairwise cosine distance of genre vectors in their top-k.

    item_genres: (item, genre_vector array<float>). Items without genres are left out; users left
    with fewer than two items do not count. With unit vectors u_i and S = sum u_i, the sum of
    similarities over ordered pairs i != j is |S|^2 - n, so no pairwise join is needed.
    """
    norm = F.sqrt(F.aggregate("genre_vector", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    # CASE WHEN, not a filter: the optimiser may evaluate the division before a filter on norm > 0.
    unit = item_genres.select("item", norm.alias("norm"), "genre_vector").select(
        "item", F.when(F.col("norm") > 0, F.transform("genre_vector", lambda x: x / F.col("norm"))).alias("u")
    ).where(F.col("u").isNotNull())
    top = recs.where(F.col("rank") <= k).join(F.broadcast(unit), "item")
    n = top.groupBy("user").agg(F.count("*").alias("n")).where(F.col("n") >= 2)
    sums = top.select("user", F.posexplode("u").alias("pos", "x")).groupBy("user", "pos").agg(F.sum("x").alias("s"))
    squared = sums.groupBy("user").agg(F.sum(F.col("s") * F.col("s")).alias("ss"))
    per_user = n.join(squared, "user").select(
        (1.0 - (F.col("ss") - F.col("n")) / (F.col("n") * (F.col("n") - 1))).alias("ild")
    )
    return float(per_user.agg(F.avg("ild")).first()[0] or 0.0)


def rating_errors(predictions: DataFrame) -> dict[str, float]:
    """RMSE and MAE over (prediction, rating) rows."""
    err = F.col("prediction") - F.col("rating")
    row = predictions.agg(F.sqrt(F.avg(err * err)).alias("rmse"), F.avg(F.abs(err)).alias("mae")).first()
    return {"rmse": float(row["rmse"] or 0.0), "mae": float(row["mae"] or 0.0)}


# ---------------------------------------------------------------- inputs shared by every model

@dataclass
class EvalInputs:
    """What every model is evaluated against; DataFrames use (user, item[, rank]) columns."""

    n_users: int
    n_items: int
    test_truth: DataFrame
    test_users: DataFrame  # (user_idx, seen) for users with test positives
    val_truth: Optional[DataFrame]
    val_users: Optional[DataFrame]
    item_counts: DataFrame  # (item, count) of train positives
    item_genres: Optional[DataFrame]  # (item, genre_vector) when features.item_features has genres

    def release(self) -> None:
        """Drop the cached frames."""
        for df in (self.test_truth, self.test_users, self.val_truth, self.val_users, self.item_counts):
            if df is not None:
                df.unpersist()


def positives(silver: DataFrame, split: str) -> DataFrame:
    """(user, item) positives of one split, by dense index."""
    return silver.where((F.col("split") == split) & (F.col("label") > 0)).select(
        F.col("user_idx").alias("user"), F.col("item_idx").alias("item")
    )


def _users_of(seen: DataFrame, truth: DataFrame) -> DataFrame:
    return seen.join(truth.select(F.col("user").alias("user_idx")).distinct(), "user_idx")


def warm_truth(truth: DataFrame, seen: DataFrame) -> DataFrame:
    """``truth`` of the users with training items: the users every model can rank from a history.

    A user with no training row (possible under ``global_time``) gets the scorer's popularity
    fallback from the model but no list from a baseline; counting them would credit the model alone.
    """
    return truth.join(seen.select(F.col("user_idx").alias("user")), "user", "left_semi")


def rated_test_pairs(silver: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(train, test) ratings, test cut to users and items that have training ratings.

    Explicit ALS cannot predict the others (``coldStartStrategy=drop``), so the model's and ALS's
    RMSE/MAE are taken over these same rows.
    """
    rated = silver.where(F.col("rating").isNotNull()).select("user_idx", "item_idx", "rating", "split")
    train = rated.where(F.col("split") == TRAIN).drop("split")
    test = (rated.where(F.col("split") == TEST).drop("split")
            .join(train.select("user_idx").distinct(), "user_idx", "left_semi")
            .join(train.select("item_idx").distinct(), "item_idx", "left_semi"))
    return train, test


def load_inputs(spark: SparkSession, cfg: Config) -> EvalInputs:
    """Read the split, catalogue and item side data once for every model's evaluation."""
    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS)
    seen = seen_items(silver)
    truth = positives(silver, TEST)
    cold = truth.select("user").distinct().join(seen.select(F.col("user_idx").alias("user")), "user", "left_anti").count()
    if cold:
        log.info("%d test users have no training items: every model is evaluated without them", cold)
    truth = warm_truth(truth, seen).cache()
    val = warm_truth(positives(silver, VALIDATION), seen)
    has_val = val.limit(1).count() > 0
    item_genres = None
    if tables.exists(spark, cfg, tables.ITEM_FEATURES):
        items = tables.read(spark, cfg, tables.ITEM_FEATURES)
        if items.where(F.size("genres") > 0).limit(1).count():
            item_genres = items.select(F.col("item_idx").alias("item"), "genre_vector")
        else:
            log.info("diversity skipped: no item has genres")
    return EvalInputs(
        n_users=tables.read(spark, cfg, tables.ID_MAP_USERS).count(),
        n_items=tables.read(spark, cfg, tables.ID_MAP_ITEMS).count(),
        test_truth=truth,
        test_users=_users_of(seen, truth).cache(),
        val_truth=val.cache() if has_val else None,
        val_users=_users_of(seen, val).cache() if has_val else None,
        item_counts=positives(silver, TRAIN).groupBy("item").count().cache(),
        item_genres=item_genres,
    )


def ranked_lists(users: DataFrame, model: FactorModel, name: str, n: int, cfg: Config) -> DataFrame:
    """(user, item, rank) top-``n`` of ``model`` for ``users`` (user_idx, seen), training items masked."""
    # A fresh key per model: Python workers cache tensors by key and must not reuse another model's.
    scored = score_users(users, model, f"{name}-{uuid.uuid4().hex}", n, cfg.score.block_size, cfg.score.threads_per_worker)
    return scored.select(F.col("user_idx").alias("user"), F.col("item_idx").alias("item"), "rank")


def validation_ndcg(inputs: EvalInputs, cfg: Config) -> Callable[[FactorModel], float]:
    """A function giving a model's NDCG@10 on the validation split (training items masked)."""

    def validate(model: FactorModel) -> float:
        recs = ranked_lists(inputs.val_users, model, "validation", TUNING_K, cfg)
        return ranking_metrics(recs, inputs.val_truth, TUNING_K)["ndcg"]

    return validate


# ---------------------------------------------------------------- baselines

def fit_als(spark: SparkSession, cfg: Config, inputs: EvalInputs) -> FactorModel:
    """Implicit ALS on the train positives; the grid is searched when a validation split exists."""
    ac = cfg.evaluate.als
    train = baselines.train_positives(tables.read(spark, cfg, tables.SILVER_INTERACTIONS)).cache()

    def fit(rank: int, reg_param: float, alpha: float) -> FactorModel:
        return baselines.fit_implicit_als(train, inputs.n_users, inputs.n_items, rank, reg_param, alpha,
                                          ac.max_iter, cfg.train.seed)

    if inputs.val_truth is None:
        model = fit(ac.rank, ac.reg_param, ac.alpha)
        log.info("als: no validation split, fixed rank=%d reg_param=%g alpha=%g", ac.rank, ac.reg_param, ac.alpha)
    else:
        grid = baselines.param_grid(rank=ac.tune_ranks or [ac.rank], reg_param=ac.tune_reg_params or [ac.reg_param],
                                    alpha=ac.tune_alphas or [ac.alpha])
        model, params, score = baselines.select_by_validation(fit, grid, validation_ndcg(inputs, cfg))
        log.info("als: chose %s (validation ndcg@%d %.4f)", params, TUNING_K, score)
    train.unpersist()
    return model


def fit_ease(spark: SparkSession, cfg: Config, inputs: EvalInputs) -> Optional[FactorModel]:
    """EASE on the train positives, lambda tuned on validation when it exists; None when skipped."""
    ec = cfg.evaluate.ease
    reason = baselines.ease_skip_reason(inputs.n_users, inputs.n_items, ec)
    if reason:
        log.warning("ease skipped: %s", reason)
        return None
    train = baselines.train_positives(tables.read(spark, cfg, tables.SILVER_INTERACTIONS))
    x = baselines.interaction_matrix(train, inputs.n_users, inputs.n_items)
    gram = baselines.gram_matrix(x)

    def fit(l2: float) -> FactorModel:
        return baselines.ease_model(x, baselines.ease_weights(gram, l2))

    if inputs.val_truth is None or not ec.tune_l2:
        log.info("ease: l2=%g", ec.l2)
        return fit(ec.l2)
    grid = baselines.param_grid(l2=ec.tune_l2)
    model, params, score = baselines.select_by_validation(fit, grid, validation_ndcg(inputs, cfg))
    log.info("ease: chose %s (validation ndcg@%d %.4f)", params, TUNING_K, score)
    return model


def als_rating_errors(spark: SparkSession, cfg: Config) -> Optional[dict[str, float]]:
    """RMSE/MAE of explicit ALS on the test ratings; None when the source has no ratings."""
    ac = cfg.evaluate.als
    train, test = rated_test_pairs(tables.read(spark, cfg, tables.SILVER_INTERACTIONS))
    if train.limit(1).count() == 0 or test.limit(1).count() == 0:
        log.info("als rating error skipped: no ratings in the train or test split")
        return None
    model = baselines.fit_rating_als(train, ac.rating_rank, ac.rating_reg_param, ac.max_iter, cfg.train.seed)
    predictions = baselines.predict_ratings(model, test, cfg.source.rating_min, cfg.source.rating_max)
    return rating_errors(predictions)


def model_rating_errors(spark: SparkSession, cfg: Config, model_dir: Path) -> Optional[dict[str, float]]:
    """RMSE/MAE of the model's rating head on the test ratings ALS is scored on; None when it has no head."""
    head_path = model_dir / RATING_HEAD_FILE
    if not head_path.is_file():
        return None
    factors, head = FactorModel.load(model_dir / FACTORS_FILE), RatingPredictor.load(head_path)
    n_users, n_items = factors.user_factors.shape[0], factors.item_factors.shape[0]
    _, test = rated_test_pairs(tables.read(spark, cfg, tables.SILVER_INTERACTIONS))
    test = test.where((F.col("user_idx") < n_users) & (F.col("item_idx") < n_items))
    broadcast = spark.sparkContext.broadcast((factors, head))
    low, high = cfg.source.rating_min, cfg.source.rating_max

    def predict(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model, predictor = broadcast.value
        for frame in frames:
            prediction = predictor.predict(model, frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy())
            yield pd.DataFrame({"prediction": np.clip(prediction, low, high), "rating": frame["rating"]})

    predictions = test.mapInPandas(predict, "prediction double, rating double")
    errors = rating_errors(predictions) if predictions.limit(1).count() else None
    broadcast.destroy()
    return errors


def baseline_models(spark: SparkSession, cfg: Config, inputs: EvalInputs) -> dict[str, FactorModel]:
    """The configured ranking baselines, fitted on the train split, by name."""
    fitters = {
        "popularity": lambda: popularity_model(spark, cfg, inputs.n_users, inputs.n_items),
        "als": lambda: fit_als(spark, cfg, inputs),
        "ease": lambda: fit_ease(spark, cfg, inputs),
    }
    models = {}
    for name in dict.fromkeys(cfg.evaluate.baselines):
        model = fitters[name]()
        if model is not None:
            models[name] = model
    return models


# ---------------------------------------------------------------- the job

def _published_model_version(spark: SparkSession, cfg: Config, ds: str) -> str:
    """The model that served ``ds``: the one evaluated."""
    first = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == ds).select("model_version").first()
    if first is None:
        raise RuntimeError(f"no recommendations for ds={ds} in {tables.RECOMMENDATIONS.path(cfg)}: run the score job first")
    return first["model_version"]


def list_metrics(recs: DataFrame, inputs: EvalInputs, ks: list[int]) -> list[tuple[str, int, float]]:
    """(metric, k, value) for every ranking and beyond-accuracy metric at every k."""
    out = []
    for k in ks:
        values = ranking_metrics(recs, inputs.test_truth, k)
        values["coverage"] = catalogue_coverage(recs, inputs.n_items, k)
        values["novelty"] = novelty(recs, inputs.item_counts, k)
        if inputs.item_genres is not None:
            values["diversity"] = intra_list_diversity(recs, inputs.item_genres, k)
        out += [(m, k, v) for m, v in values.items()]
    return out


def run(spark: SparkSession, cfg: Config, ds: str) -> list[dict]:
    """Compute metrics for ``ds``, replace that ds in serving.metrics, and return the rows."""
    ks = sorted(set(cfg.evaluate.k))
    inputs = load_inputs(spark, cfg)
    model_version = _published_model_version(spark, cfg, ds)
    # Ranked here like the baselines, minus training items only: the served lists also leave out
    # what the user did later (the test split), so they cannot be scored against it.
    published = FactorModel.load(Path(resolve_path(cfg.models_dir)) / model_version / FACTORS_FILE)
    known = inputs.test_users.where(F.col("user_idx") < published.user_factors.shape[0])  # users newer than it: no list
    recs_by_model = {"model": ranked_lists(known, published, model_version, max(ks), cfg)}
    for name, model in baseline_models(spark, cfg, inputs).items():
        recs_by_model[name] = ranked_lists(inputs.test_users, model, name, max(ks), cfg)

    values: list[tuple[str, str, int, float]] = []
    for name, recs in recs_by_model.items():
        recs = recs.cache()
        values += [(name, m, k, v) for m, k, v in list_metrics(recs, inputs, ks)]
        recs.unpersist()
    errors = model_rating_errors(spark, cfg, Path(resolve_path(cfg.models_dir)) / model_version)
    values += [("model", m, 0, v) for m, v in (errors or {}).items()]
    if "als" in cfg.evaluate.baselines:
        errors = als_rating_errors(spark, cfg)
        values += [("als", m, 0, v) for m, v in (errors or {}).items()]

    rows = [{"ds": ds, "model_version": model_version, "model": name, "metric": m, "k": k, "value": float(v)}
            for name, m, k, v in values]
    df = spark.createDataFrame(rows, tables.METRICS.schema)
    tables.replace_where(df, cfg, tables.METRICS, f"ds = '{ds}'")
    inputs.release()
    log.info("evaluate %s: %d metric rows for %s and %s", ds, len(rows), model_version, ", ".join(recs_by_model))
    return rows


def format_table(rows: list[dict]) -> str:
    """A small text table: one line per (metric, k), one column per model; '-' where a model has no value."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["metric"], r["k"]) for r in rows))
    value = {(r["model"], r["metric"], r["k"]): r["value"] for r in rows}
    lines = [f"{'metric':<14}" + "".join(f"{m:>12}" for m in models)]
    for metric, k in keys:
        label = f"{metric}@{k}" if k else metric
        cells = (f"{value[(m, metric, k)]:>12.4f}" if (m, metric, k) in value else f"{'-':>12}" for m in models)
        lines.append(f"{label:<14}" + "".join(cells))
    return "\n".join(lines)
