"""Evaluate one night: the lists served the night before against what users did since (the
operator's number, :mod:`lakerec.feedback`), and the backtest model beside in-product baselines on
the same test split (is the recipe still good?).

Full ranking: every item not seen in training competes, no sampled negatives. The baselines
(:mod:`lakerec.baselines`: popularity, ALS, EASE, chosen by ``evaluate.baselines``) are fitted on
the same train split, tuned on the validation split when there is one (through
:func:`validation_ndcg`), and ranked by the same masked top-N scorer as the model. This module
holds the inputs every model is evaluated against, the ranked lists, and the job; the metrics are
in :mod:`lakerec.metrics_spark`, each with a pure-Python twin in :mod:`lakerec.metrics`. Frames use
the table vocabulary (``user_idx``, ``item_idx``, ``rank``). Rows go to serving.metrics as
(ds, model_version, model, metric, k, value); metrics without a cutoff (rmse, mae) have k = 0.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakerec import baselines, faults, feedback, tables
from lakerec.config import Config
from lakerec.features import TEST, TRAIN, VALIDATION
from lakerec.metrics_spark import catalogue_coverage, intra_list_diversity, novelty, ranking_metrics, rating_errors
from lakerec.model_store import BACKTEST, FACTORS_FILE, RATING_HEAD_FILE
from lakerec.models import FactorModel, RatingPredictor
from lakerec.score import catalogue, in_catalogue, score_users, seen_items
from lakerec.snapshot import Snapshot, backtest_due, checked_ds
from lakerec.tables import ITEM_IDX, PREDICTION, RANK, RATING, USER_IDX

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- inputs shared by every model

@dataclass
class EvalInputs:
    """What every model is evaluated against; DataFrames use (user_idx, item_idx[, rank]) columns."""

    n_users: int
    n_items: int
    test_truth: DataFrame
    test_users: DataFrame  # (user_idx, seen) for users with test positives
    val_truth: Optional[DataFrame]
    val_users: Optional[DataFrame]
    item_counts: DataFrame  # (item_idx, count) of train positives
    item_genres: Optional[DataFrame]  # (item_idx, genre_vector) when features.item_features has genres
    silver: DataFrame  # the night's interactions, split
    catalogue: np.ndarray  # item_idx of the night's catalogue: every model ranks these alone

    def release(self) -> None:
        """Drop the cached frames."""
        for df in (self.test_truth, self.test_users, self.val_truth, self.val_users, self.item_counts):
            if df is not None:
                df.unpersist()


def positives(silver: DataFrame, split: str) -> DataFrame:
    """(user_idx, item_idx) positives of one split."""
    return silver.where((F.col("split") == split) & (F.col("label") > 0)).select(USER_IDX, ITEM_IDX)


def _users_of(seen: DataFrame, truth: DataFrame) -> DataFrame:
    """(user_idx, seen) of the users in ``truth``: who gets ranked."""
    return seen.join(truth.select(USER_IDX).distinct(), USER_IDX)


def warm_truth(truth: DataFrame, seen: DataFrame) -> DataFrame:
    """``truth`` of the users with training items: the users every model can rank from a history.

    A user with no training row (possible under ``global_time``) gets the scorer's popularity
    fallback from the model but no list from a baseline; counting them would credit the model alone.
    """
    return truth.join(seen.select(USER_IDX), USER_IDX, "left_semi")


def rated_test_pairs(silver: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(train, test) ratings, test cut to users and items that have training ratings.

    Explicit ALS cannot predict the others (``coldStartStrategy=drop``), so the model's and ALS's
    RMSE/MAE are taken over these same rows.
    """
    rated = silver.where(F.col(RATING).isNotNull()).select(USER_IDX, ITEM_IDX, RATING, "split")
    train = rated.where(F.col("split") == TRAIN).drop("split")
    test = (rated.where(F.col("split") == TEST).drop("split")
            .join(train.select(USER_IDX).distinct(), USER_IDX, "left_semi")
            .join(train.select(ITEM_IDX).distinct(), ITEM_IDX, "left_semi"))
    return train, test


def _item_genres(items: DataFrame) -> Optional[DataFrame]:
    """(item_idx, genre_vector) of the night's ``items`` when some item has genres; None (diversity skipped) otherwise."""
    if items.where(F.size("genres") > 0).limit(1).count():
        return items.select(ITEM_IDX, "genre_vector")
    log.info("diversity skipped: no item has genres")
    return None


def load_inputs(spark: SparkSession, cfg: Config, snap: Snapshot) -> EvalInputs:
    """Read the night's split, catalogue and item side data once for every model's evaluation."""
    silver = snap.read(spark, cfg, tables.SILVER_INTERACTIONS)
    seen = seen_items(silver)
    truth = positives(silver, TEST)
    cold = truth.select(USER_IDX).distinct().join(seen.select(USER_IDX), USER_IDX, "left_anti").count()
    if cold:
        log.info("%d test users have no training items: every model is evaluated without them", cold)
    truth = warm_truth(truth, seen).cache()
    val = warm_truth(positives(silver, VALIDATION), seen)
    has_val = val.limit(1).count() > 0
    item_genres = _item_genres(snap.read(spark, cfg, tables.ITEM_FEATURES))
    return EvalInputs(
        n_users=snap.read(spark, cfg, tables.ID_MAP_USERS).count(),
        n_items=snap.read(spark, cfg, tables.ID_MAP_ITEMS).count(),
        test_truth=truth,
        test_users=_users_of(seen, truth).cache(),
        val_truth=val.cache() if has_val else None,
        val_users=_users_of(seen, val).cache() if has_val else None,
        item_counts=positives(silver, TRAIN).groupBy(ITEM_IDX).count().cache(),
        item_genres=item_genres,
        silver=silver,
        catalogue=catalogue(spark, cfg, snap),
    )


# ---------------------------------------------------------------- ranking and scoring one model

def ranked_lists(users: DataFrame, model: FactorModel, name: str, n: int, cfg: Config) -> DataFrame:
    """(user_idx, item_idx, rank) top-``n`` of ``model`` for ``users`` (user_idx, seen), training items masked."""
    # A fresh key per model: Python workers cache tensors by key and must not reuse another model's.
    scored = score_users(users, model, f"{name}-{uuid.uuid4().hex}", n, cfg.score.block_size, cfg.score.threads_per_worker)
    return scored.select(USER_IDX, ITEM_IDX, RANK)


def validation_ndcg(inputs: EvalInputs, cfg: Config) -> Optional[baselines.Validate]:
    """The baselines' tuning hook: a model's NDCG@TUNING_K on the validation split; None without one."""
    if inputs.val_truth is None:
        return None

    def validate(model: FactorModel) -> float:
        recs = ranked_lists(inputs.val_users, model, "validation", baselines.TUNING_K, cfg)
        return ranking_metrics(recs, inputs.val_truth, [baselines.TUNING_K])[baselines.TUNING_K]["ndcg"]

    return validate


def list_metrics(recs: DataFrame, inputs: EvalInputs, ks: list[int]) -> list[tuple[str, int, float]]:
    """(metric, k, value) for every ranking and beyond-accuracy metric at every k."""
    by_k = ranking_metrics(recs, inputs.test_truth, ks)
    beyond = {"coverage": catalogue_coverage(recs, inputs.n_items, ks), "novelty": novelty(recs, inputs.item_counts, ks)}
    if inputs.item_genres is not None:
        beyond["diversity"] = intra_list_diversity(recs, inputs.item_genres, ks)
    for name, values in beyond.items():
        for k, value in values.items():
            by_k[k][name] = value
    return [(m, k, v) for k, values in by_k.items() for m, v in values.items()]


def model_rating_errors(spark: SparkSession, silver: DataFrame, cfg: Config, model_dir: Path) -> Optional[dict[str, float]]:
    """RMSE/MAE of the model's rating head on the test ratings ALS is scored on; None when it has no head."""
    head_path = model_dir / RATING_HEAD_FILE
    if not head_path.is_file():
        return None
    factors, head = FactorModel.load(model_dir / FACTORS_FILE), RatingPredictor.load(head_path)
    n_users, n_items = factors.user_factors.shape[0], factors.item_factors.shape[0]
    _, test = rated_test_pairs(silver)
    test = test.where((F.col(USER_IDX) < n_users) & (F.col(ITEM_IDX) < n_items))
    broadcast = spark.sparkContext.broadcast((factors, head))
    low, high = cfg.source.rating_min, cfg.source.rating_max

    def predict(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model, predictor = broadcast.value
        for frame in frames:
            prediction = predictor.predict(model, frame[USER_IDX].to_numpy(), frame[ITEM_IDX].to_numpy())
            yield pd.DataFrame({PREDICTION: np.clip(prediction, low, high), RATING: frame[RATING]})

    predictions = test.mapInPandas(predict, f"{PREDICTION} double, {RATING} double").cache()  # predicted once
    errors = rating_errors(predictions) if predictions.limit(1).count() else None
    predictions.unpersist()
    broadcast.destroy()
    return errors


# ---------------------------------------------------------------- the job

def backtest_rows(spark: SparkSession, cfg: Config, snap: Snapshot) -> list[tuple[str, str, str, int, float]]:
    """(model_version, model, metric, k, value) of the night's backtest model beside the baselines."""
    ks = sorted(set(cfg.evaluate.k))
    inputs = load_inputs(spark, cfg, snap)
    model_dir = snap.model_dir(cfg, BACKTEST)
    backtest = FactorModel.load(model_dir / FACTORS_FILE)
    known = inputs.test_users.where(F.col(USER_IDX) < backtest.user_factors.shape[0])  # users newer than it: no list
    recs_by_model = {"model": ranked_lists(known, in_catalogue(backtest, inputs.catalogue), model_dir.name, max(ks), cfg)}
    fitted = baselines.baseline_models(cfg, inputs.silver, inputs.n_users, inputs.n_items, validation_ndcg(inputs, cfg))
    for name, model in fitted.items():
        recs_by_model[name] = ranked_lists(inputs.test_users, in_catalogue(model, inputs.catalogue), name, max(ks), cfg)

    values: list[tuple[str, str, int, float]] = []
    for name, recs in recs_by_model.items():
        recs = recs.cache()
        values += [(name, m, k, v) for m, k, v in list_metrics(recs, inputs, ks)]
        recs.unpersist()
    errors = model_rating_errors(spark, inputs.silver, cfg, model_dir)
    values += [("model", m, 0, v) for m, v in (errors or {}).items()]
    if "als" in cfg.evaluate.baselines:
        train, test = rated_test_pairs(inputs.silver)
        errors = baselines.als_rating_errors(cfg, train, test)
        values += [("als", m, 0, v) for m, v in (errors or {}).items()]
    inputs.release()
    log.info("evaluate %s: backtest %s beside %s", snap.ds, model_dir.name, ", ".join(fitted))
    return [(model_dir.name, name, m, k, float(v)) for name, m, k, v in values]


@faults.job("evaluate")
def run(spark: SparkSession, cfg: Config, ds: str) -> list[dict]:
    """Metrics for ``ds``: the lists served the night before against what arrived since (every night
    after the first), and the backtest model beside the baselines (when due); replaces that ds in
    serving.metrics and returns the rows."""
    snap = Snapshot.load(spark, cfg, ds)
    values = feedback.served_rows(spark, cfg, snap)
    if backtest_due(cfg, ds):
        values += backtest_rows(spark, cfg, snap)
    rows = [{"ds": ds, "model_version": version, "model": name, "metric": m, "k": k, "value": v}
            for version, name, m, k, v in values]
    df = spark.createDataFrame(rows, tables.METRICS.schema)
    tables.replace_where(df, cfg, tables.METRICS, tables.equals(ds=checked_ds(ds)))
    log.info("evaluate %s: %d metric rows", ds, len(rows))
    return rows
