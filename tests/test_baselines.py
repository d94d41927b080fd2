"""Baselines: EASE closed form, ALS factors, full-ranking top-N without seen items, validation tuning."""
import ast
import logging
import re

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import PIPELINE_DS, make_config
from lakerec import baselines, evaluate, features, ingest
from lakerec.config import EaseConfig
from lakerec.features import TRAIN
from lakerec.snapshot import Snapshot


def _direct_ease(x: np.ndarray, l2: float) -> np.ndarray:
    """EASE by its definition: per item j, ridge regression of column j on the other columns."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        xo = x[:, others]
        b[others, j] = np.linalg.solve(xo.T @ xo + l2 * np.eye(n - 1), xo.T @ x[:, j])
    return b


def test_ease_closed_form_matches_a_direct_solve():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 8)) < 0.35).astype(np.float32)
    for l2 in (0.5, 10.0):
        b = baselines.ease_weights(baselines.gram_matrix(x), l2)
        assert np.allclose(b, _direct_ease(x.astype(np.float64), l2), atol=1e-4)
        assert np.all(np.diag(b) == 0.0)


def test_ease_factor_model_scores_x_times_b():
    rng = np.random.default_rng(1)
    x = (rng.random((6, 5)) < 0.5).astype(np.float32)
    b = baselines.ease_weights(baselines.gram_matrix(x), 2.0)
    model = baselines.ease_model(x, b)
    assert np.allclose(model.user_factors @ model.item_factors.T + model.item_bias, x @ b, atol=1e-6)


def test_ease_is_skipped_above_the_configured_size():
    ec = EaseConfig(max_items=100, max_user_item_cells=10_000)
    assert baselines.ease_skip_reason(50, 100, ec) is None
    assert "max_items" in baselines.ease_skip_reason(50, 101, ec)
    assert "max_user_item_cells" in baselines.ease_skip_reason(101, 100, ec)


def test_select_by_validation_keeps_the_best_and_the_first_of_ties():
    fitted = []

    def fit(a: int, b: int):
        fitted.append((a, b))
        return (a, b)

    grid = baselines.param_grid(a=[1, 2], b=[10, 20])
    assert grid == [{"a": 1, "b": 10}, {"a": 1, "b": 20}, {"a": 2, "b": 10}, {"a": 2, "b": 20}]
    model, params, score = baselines.select_by_validation(fit, grid, lambda m: -abs(m[0] - 2))
    assert fitted == [(1, 10), (1, 20), (2, 10), (2, 20)]
    assert (model, params, score) == ((2, 10), {"a": 2, "b": 10}, 0)
    with pytest.raises(ValueError):
        baselines.select_by_validation(fit, [], lambda m: 0.0)


@pytest.mark.slow
def test_als_users_and_items_it_never_saw_get_zero_vectors(spark):
    positives = spark.createDataFrame([(0, 0), (0, 1), (2, 1), (2, 3)], "user_idx int, item_idx int")
    model = baselines.fit_implicit_als(positives, n_users=4, n_items=5, rank=3, reg_param=0.1, alpha=1.0, max_iter=3, seed=1)
    assert model.user_factors.shape == (4, 3) and model.item_factors.shape == (5, 3)
    assert not model.user_factors[[1, 3]].any() and not model.item_factors[[2, 4]].any()
    assert model.user_factors[[0, 2]].any(axis=1).all() and model.item_factors[[0, 1, 3]].any(axis=1).all()


@pytest.fixture(scope="module")
def pipeline_inputs(spark, pipeline_run):
    cfg, _ = pipeline_run
    inputs = evaluate.load_inputs(spark, cfg, Snapshot.load(spark, cfg, PIPELINE_DS))
    yield cfg, inputs
    inputs.release()


@pytest.mark.parametrize("name", ["als", "ease"])
def test_baseline_top_n_ranks_only_items_unseen_in_training(spark, pipeline_inputs, name):
    cfg, inputs = pipeline_inputs
    assert evaluate.validation_ndcg(inputs, cfg) is None  # no validation split: fixed hyperparameters
    fit = {"als": baselines.fit_als, "ease": baselines.fit_ease}[name]
    model = fit(cfg, inputs.silver, inputs.n_users, inputs.n_items, None)
    n = 15
    recs = evaluate.ranked_lists(inputs.test_users, model, name, n, cfg).toPandas()
    train = {(r["user_idx"], r["item_idx"]) for r in inputs.silver.where(F.col("split") == TRAIN).collect()}
    assert list(recs.columns) == ["user_idx", "item_idx", "rank"]
    assert set(recs["user_idx"]) == {r["user_idx"] for r in inputs.test_users.collect()}
    assert not {(u, i) for u, i in zip(recs["user_idx"], recs["item_idx"])} & train
    for user, user_recs in recs.groupby("user_idx"):
        seen = sum(1 for u, _ in train if u == user)
        assert sorted(user_recs["rank"]) == list(range(1, min(n, inputs.n_items - seen) + 1))
        assert user_recs["item_idx"].is_unique


@pytest.fixture(scope="module")
def validation_warehouse(spark, tiny_source, tmp_path_factory):
    """Ingest + features only, with a validation split for tuning."""
    root = tmp_path_factory.mktemp("validation")
    cfg = make_config(root, tiny_source, "features.val_fraction=0.2",
                      "evaluate.als.tune_ranks=[2, 8]", "evaluate.als.tune_reg_params=[0.1]",
                      "evaluate.als.tune_alphas=[5.0]", "evaluate.als.max_iter=5", "evaluate.ease.tune_l2=[1.0, 1000.0]")
    ingest.run(spark, cfg, "2026-01-01")
    features.run(spark, cfg, "2026-01-01")
    inputs = evaluate.load_inputs(spark, cfg, Snapshot.load(spark, cfg, "2026-01-01"))
    yield cfg, inputs
    inputs.release()


@pytest.mark.slow
def test_tuning_picks_the_grid_point_with_the_best_validation_ndcg(spark, validation_warehouse, caplog):
    cfg, inputs = validation_warehouse
    assert inputs.val_truth is not None and inputs.val_truth.count() > 0
    validate = evaluate.validation_ndcg(inputs, cfg)
    with caplog.at_level(logging.INFO, logger="lakerec"):
        als = baselines.fit_als(cfg, inputs.silver, inputs.n_users, inputs.n_items, validate)
    scores = {
        ast.literal_eval(m.group(1))["rank"]: float(m.group(2))
        for m in (re.match(r"validation (\{.*\}): ([0-9.]+)$", r.getMessage()) for r in caplog.records) if m
    }
    assert set(scores) == {2, 8}
    assert scores[als.user_factors.shape[1]] == max(scores.values())

    ease = baselines.fit_ease(cfg, inputs.silver, inputs.n_users, inputs.n_items, validate)
    train = baselines.train_positives(inputs.silver)
    x = baselines.interaction_matrix(train, inputs.n_users, inputs.n_items)
    weights = {l2: baselines.ease_weights(baselines.gram_matrix(x), l2) for l2 in (1.0, 1000.0)}
    by_l2 = {l2: validate(baselines.ease_model(x, b)) for l2, b in weights.items()}
    assert by_l2[1.0] != by_l2[1000.0]
    best = max(by_l2, key=by_l2.get)
    assert np.allclose(ease.item_factors, weights[best].T)
