"""Baselines fitted inside the product, on the model's own train split: popularity, ALS and EASE.

Each becomes a :class:`~lakerec.models.FactorModel`, so :func:`lakerec.score.score_users` ranks
the whole catalogue for it with the user's training items masked, exactly as for the model
(popularity is :func:`lakerec.score.popularity_model`). Hyperparameters are chosen on the
validation split when there is one (:func:`select_by_validation`), never on test: the caller
passes ``validate``, a model's validation NDCG@``TUNING_K`` (:func:`lakerec.evaluate.validation_ndcg`),
so this module needs nothing from the evaluation job.

- Implicit ALS (Spark MLlib, Hu-Koren-Volinsky): train positives with confidence 1 + alpha.
- Explicit ALS on the train ratings predicts ratings, for RMSE/MAE.
- EASE (Steck 2019): B = I - P diag(1/diag(P)), P = (X'X + lambda I)^-1, zero diagonal, on the
  driver; scores are X[u] @ B, so the FactorModel is (user_factors=X, item_factors=B').
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable, Optional

import numpy as np
import torch
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakerec.config import Config, EaseConfig
from lakerec.features import TRAIN
from lakerec.metrics_spark import rating_errors
from lakerec.models import FactorModel
from lakerec.score import popularity_model
from lakerec.tables import ITEM_IDX, PREDICTION, RATING, USER_IDX

log = logging.getLogger(__name__)

TUNING_K = 10  # hyperparameters are chosen on validation NDCG at this cutoff
Validate = Callable[[FactorModel], float]


def train_positives(silver: DataFrame) -> DataFrame:
    """(user_idx, item_idx) of the positive train interactions: what every ranking baseline learns from."""
    return silver.where((F.col("split") == TRAIN) & (F.col("label") > 0)).select(USER_IDX, ITEM_IDX)


def param_grid(**values: list) -> list[dict]:
    """Every combination of the given parameter values, as keyword dicts, in a stable order."""
    names = list(values)
    return [dict(zip(names, combo)) for combo in itertools.product(*(values[n] for n in names))]


def select_by_validation(
    fit: Callable[..., FactorModel], grid: list[dict], validate: Callable[[FactorModel], float]
) -> tuple[FactorModel, dict, float]:
    """Fit every ``grid`` point, keep the one ``validate`` scores highest (first wins ties)."""
    if not grid:
        raise ValueError("select_by_validation needs a non-empty grid")
    best: Optional[tuple[FactorModel, dict, float]] = None
    for params in grid:
        model = fit(**params)
        score = validate(model)
        log.info("validation %s: %.6f", params, score)
        if best is None or score > best[2]:
            best = (model, params, score)
    return best


# ---------------------------------------------------------------- ALS

def _dense_factors(factors: DataFrame, n_rows: int, rank: int) -> np.ndarray:
    """ALS (id, features) rows -> (n_rows, rank); ids ALS never saw keep a zero vector."""
    out = np.zeros((n_rows, rank), np.float32)
    pdf = factors.where(F.col("id") < n_rows).toPandas()
    if len(pdf):
        out[pdf["id"].to_numpy()] = np.stack(pdf["features"].to_numpy())
    return out


def als_factor_model(model: ALSModel, n_users: int, n_items: int) -> FactorModel:
    """An ALS model's factors as a FactorModel over the dense user/item index ranges."""
    return FactorModel(
        _dense_factors(model.userFactors, n_users, model.rank),
        _dense_factors(model.itemFactors, n_items, model.rank),
        np.zeros(n_items, np.float32),
    )


def fit_implicit_als(
    positives: DataFrame, n_users: int, n_items: int, rank: int, reg_param: float, alpha: float,
    max_iter: int, seed: int,
) -> FactorModel:
    """Implicit-feedback ALS on (user_idx, item_idx) positives, each with confidence 1 + alpha."""
    als = ALS(
        userCol=USER_IDX, itemCol=ITEM_IDX, ratingCol="strength", implicitPrefs=True,
        rank=rank, regParam=reg_param, alpha=alpha, maxIter=max_iter, seed=seed,
    )
    model = als.fit(positives.select(USER_IDX, ITEM_IDX, F.lit(1.0).alias("strength")))
    return als_factor_model(model, n_users, n_items)


def fit_rating_als(ratings: DataFrame, rank: int, reg_param: float, max_iter: int, seed: int) -> ALSModel:
    """Explicit ALS on (user_idx, item_idx, rating); unknown users/items are dropped at prediction."""
    als = ALS(
        userCol=USER_IDX, itemCol=ITEM_IDX, ratingCol=RATING, implicitPrefs=False,
        rank=rank, regParam=reg_param, maxIter=max_iter, seed=seed, coldStartStrategy="drop",
    )
    return als.fit(ratings.select(USER_IDX, ITEM_IDX, RATING))


def predict_ratings(model: ALSModel, rows: DataFrame, rating_min: float, rating_max: float) -> DataFrame:
    """(prediction, rating) for ``rows`` the model knows, clipped to the source's rating scale."""
    predicted = model.transform(rows.select(USER_IDX, ITEM_IDX, RATING))
    clipped = F.least(F.greatest(F.col(model.getPredictionCol()).cast("double"), F.lit(rating_min)), F.lit(rating_max))
    return predicted.select(clipped.alias(PREDICTION), F.col(RATING).cast("double").alias(RATING))


# ---------------------------------------------------------------- EASE

def ease_skip_reason(n_users: int, n_items: int, ec: EaseConfig) -> Optional[str]:
    """Why EASE cannot run on this data with this config, or None when it can."""
    if n_items > ec.max_items:
        return f"{n_items} items > evaluate.ease.max_items={ec.max_items} (the Gram matrix is items^2 floats)"
    if n_users * n_items > ec.max_user_item_cells:
        return (f"{n_users} users x {n_items} items > evaluate.ease.max_user_item_cells={ec.max_user_item_cells} "
                "(the scorer holds the dense user x item matrix)")
    return None


def interaction_matrix(positives: DataFrame, n_users: int, n_items: int) -> np.ndarray:
    """Dense binary (n_users, n_items) float32 matrix of (user_idx, item_idx) positives."""
    x = np.zeros((n_users, n_items), np.float32)
    pdf = positives.where((F.col(USER_IDX) < n_users) & (F.col(ITEM_IDX) < n_items)).toPandas()
    x[pdf[USER_IDX].to_numpy(), pdf[ITEM_IDX].to_numpy()] = 1.0
    return x


def gram_matrix(x: np.ndarray) -> np.ndarray:
    """X'X (items x items) in float32."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return (t.T @ t).numpy()


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE item-item weights B from the Gram matrix X'X: B = I - P diag(1/diag(P)), diag(B) = 0."""
    g = torch.from_numpy(np.array(gram, dtype=np.float32))
    g.diagonal().add_(l2)
    p = torch.linalg.inv(g)
    b = -p / p.diagonal().unsqueeze(0)
    b.diagonal().zero_()
    return b.numpy()


def ease_model(x: np.ndarray, b: np.ndarray) -> FactorModel:
    """EASE as a FactorModel: user_factors = X, item_factors = B', so U V' = X B."""
    return FactorModel(x, np.ascontiguousarray(b.T), np.zeros(b.shape[0], np.float32))


# ---------------------------------------------------------------- fitting and tuning from the config

def fit_als(cfg: Config, silver: DataFrame, n_users: int, n_items: int, validate: Optional[Validate]) -> FactorModel:
    """Implicit ALS on the train positives; the grid is searched when ``validate`` is given (a validation split)."""
    ac = cfg.evaluate.als
    train = train_positives(silver).cache()

    def fit(rank: int, reg_param: float, alpha: float) -> FactorModel:
        return fit_implicit_als(train, n_users, n_items, rank, reg_param, alpha, ac.max_iter, cfg.train.seed)

    if validate is None:
        model = fit(ac.rank, ac.reg_param, ac.alpha)
        log.info("als: no validation split, fixed rank=%d reg_param=%g alpha=%g", ac.rank, ac.reg_param, ac.alpha)
    else:
        grid = param_grid(rank=ac.tune_ranks or [ac.rank], reg_param=ac.tune_reg_params or [ac.reg_param],
                          alpha=ac.tune_alphas or [ac.alpha])
        model, params, score = select_by_validation(fit, grid, validate)
        log.info("als: chose %s (validation ndcg@%d %.4f)", params, TUNING_K, score)
    train.unpersist()
    return model


def fit_ease(
    cfg: Config, silver: DataFrame, n_users: int, n_items: int, validate: Optional[Validate]
) -> Optional[FactorModel]:
    """EASE on the train positives, lambda tuned when ``validate`` is given; None when skipped."""
    ec = cfg.evaluate.ease
    reason = ease_skip_reason(n_users, n_items, ec)
    if reason:
        log.warning("ease skipped: %s", reason)
        return None
    x = interaction_matrix(train_positives(silver), n_users, n_items)
    gram = gram_matrix(x)

    def fit(l2: float) -> FactorModel:
        return ease_model(x, ease_weights(gram, l2))

    if validate is None or not ec.tune_l2:
        log.info("ease: l2=%g", ec.l2)
        return fit(ec.l2)
    model, params, score = select_by_validation(fit, param_grid(l2=ec.tune_l2), validate)
    log.info("ease: chose %s (validation ndcg@%d %.4f)", params, TUNING_K, score)
    return model


def als_rating_errors(cfg: Config, train: DataFrame, test: DataFrame) -> Optional[dict[str, float]]:
    """RMSE/MAE of explicit ALS fitted on ``train`` ratings, on ``test``; None when either is empty."""
    ac = cfg.evaluate.als
    if train.limit(1).count() == 0 or test.limit(1).count() == 0:
        log.info("als rating error skipped: no ratings in the train or test split")
        return None
    model = fit_rating_als(train, ac.rating_rank, ac.rating_reg_param, ac.max_iter, cfg.train.seed)
    return rating_errors(predict_ratings(model, test, cfg.source.rating_min, cfg.source.rating_max))


def baseline_models(
    cfg: Config, silver: DataFrame, n_users: int, n_items: int, validate: Optional[Validate]
) -> dict[str, FactorModel]:
    """The configured ranking baselines (``evaluate.baselines``), fitted on the train split of the
    night's ``silver``, by name."""
    fitters = {
        "popularity": lambda: popularity_model(train_positives(silver), n_users, n_items),
        "als": lambda: fit_als(cfg, silver, n_users, n_items, validate),
        "ease": lambda: fit_ease(cfg, silver, n_users, n_items, validate),
    }
    models = {}
    for name in dict.fromkeys(cfg.evaluate.baselines):
        model = fitters[name]()
        if model is not None:
            models[name] = model
    return models
