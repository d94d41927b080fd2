"""Metrics: Spark implementation vs pure-Python twins vs hand-computed values; validation ranks like the scorer."""
import json
import math
import random

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import PIPELINE_DS
from lakerec import metrics, tables, validation
from lakerec.evaluate import rated_test_pairs, warm_truth
from lakerec.metrics_spark import catalogue_coverage, intra_list_diversity, novelty, ranking_metrics, rating_errors
from lakerec.models import FactorModel
from lakerec.report import format_table


def test_hand_computed_case():
    recs, relevant = ["a", "b", "c", "d"], {"b", "d", "z"}
    assert metrics.precision_at_k(recs, relevant, 4) == 0.5
    assert metrics.recall_at_k(recs, relevant, 4) == pytest.approx(2 / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(recs, relevant, 4) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert metrics.average_precision_at_k(recs, relevant, 4) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert metrics.hit_rate_at_k(recs, relevant, 1) == 0.0


def test_beyond_accuracy_hand_computed_case():
    recs = {"u1": ["a", "b", "c"], "u2": ["a", "d", "x"]}
    assert metrics.catalogue_coverage(recs, 10, 2) == pytest.approx(3 / 10)  # a, b, d
    assert metrics.catalogue_coverage(recs, 10, 3) == pytest.approx(5 / 10)
    counts = {"a": 4, "b": 2, "c": 1, "d": 1}  # 8 interactions; x never seen in training counts as 1
    expected = (2 * math.log2(8 / 4) + math.log2(8 / 2) + math.log2(8) + math.log2(8) + math.log2(8)) / 6
    assert metrics.novelty(recs, counts, 3) == pytest.approx(expected)
    genres = {"a": {"Drama"}, "b": {"Drama", "Comedy"}, "c": {"Horror"}, "d": set()}
    # u1 pairs: a-b 1 - 1/sqrt(2), a-c 1, b-c 1; u2 has a single item with genres and does not count.
    assert metrics.intra_list_diversity(recs, genres, 3) == pytest.approx((3 - 1 / math.sqrt(2)) / 3)
    assert metrics.intra_list_diversity(recs, genres, 2) == pytest.approx(1 - 1 / math.sqrt(2))


def test_rating_errors_hand_computed_case():
    pairs = [(4.0, 5.0), (3.0, 1.0), (2.5, 2.5)]
    assert metrics.rmse(pairs) == pytest.approx(math.sqrt((1 + 4 + 0) / 3))
    assert metrics.mae(pairs) == pytest.approx((1 + 2 + 0) / 3)


@pytest.fixture(scope="module")
def random_case(spark):
    """Random top-12 lists, truth sets, train counts and genre sets, in Python and as DataFrames."""
    rng = random.Random(7)
    recs, truth = {}, {}
    for user in range(30):
        recs[user] = rng.sample(range(40), 12)
        truth[user] = set(rng.sample(range(40), rng.randint(1, 8)))
    recs[99] = [1, 2, 3]  # a user without test items does not count
    truth[98] = {5}  # a user without recommendations counts as zero
    genre_names = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi"]
    genres = {item: set(rng.sample(genre_names, rng.randint(0, 3))) for item in range(40)}
    counts = {item: rng.randint(1, 50) for item in range(35)}  # items 35..39 never seen in training
    frames = {
        "recs": spark.createDataFrame(
            [(u, i, r + 1) for u, items in recs.items() for r, i in enumerate(items)],
            "user_idx int, item_idx int, rank int",
        ),
        "truth": spark.createDataFrame([(u, i) for u, items in truth.items() for i in items], "user_idx int, item_idx int"),
        "counts": spark.createDataFrame(list(counts.items()), "item_idx int, count long"),
        "genres": spark.createDataFrame(
            [(i, [float(g in gs) for g in genre_names]) for i, gs in genres.items()],
            "item_idx int, genre_vector array<float>",
        ),
    }
    return recs, truth, counts, genres, frames


def test_spark_ranking_metrics_equal_the_python_twins_at_every_cutoff_at_once(random_case):
    recs, truth, _, _, frames = random_case
    got = ranking_metrics(frames["recs"], frames["truth"], [10, 1, 5, 5])
    assert list(got) == [1, 5, 10]
    for k in (1, 5, 10):
        assert got[k] == pytest.approx(metrics.mean_ranking_metrics(recs, truth, k))


def test_spark_beyond_accuracy_metrics_equal_the_python_twins_at_every_cutoff_at_once(random_case):
    recs, _, counts, genres, frames = random_case
    ks = [1, 5, 12]
    coverage = catalogue_coverage(frames["recs"], 40, ks)
    novel = novelty(frames["recs"], frames["counts"], ks)
    diverse = intra_list_diversity(frames["recs"], frames["genres"], ks)
    for k in ks:
        assert coverage[k] == pytest.approx(metrics.catalogue_coverage(recs, 40, k))
        assert novel[k] == pytest.approx(metrics.novelty(recs, counts, k))
        assert diverse[k] == pytest.approx(metrics.intra_list_diversity(recs, genres, k))
    assert diverse[1] == 0.0 and 0.0 < diverse[5] < 1.0 and 0.0 < diverse[12] < 1.0


def test_spark_metrics_refuse_a_cutoff_below_one(random_case):
    with pytest.raises(ValueError, match="cut-offs must be >= 1"):
        ranking_metrics(random_case[4]["recs"], random_case[4]["truth"], [0, 5])


def test_spark_rating_errors_equal_the_python_twins(spark):
    rng = random.Random(11)
    pairs = [(rng.uniform(1, 5), float(rng.randint(1, 5))) for _ in range(200)]
    got = rating_errors(spark.createDataFrame(pairs, "prediction double, rating double"))
    assert got == pytest.approx({"rmse": metrics.rmse(pairs), "mae": metrics.mae(pairs)})


def test_spark_metrics_take_other_column_names(random_case):
    """The col_* keywords let frames with their own column names in without renaming."""
    recs, truth, counts, genres, frames = random_case
    names = {"user_idx": "user", "item_idx": "item", "rank": "position"}
    own = {key: df.select(*[F.col(c).alias(names.get(c, c)) for c in df.columns]) for key, df in frames.items()}
    cols = {"col_user": "user", "col_item": "item", "col_rank": "position"}
    assert ranking_metrics(own["recs"], own["truth"], [5], **cols)[5] == pytest.approx(
        metrics.mean_ranking_metrics(recs, truth, 5))
    assert catalogue_coverage(own["recs"], 40, [5], col_item="item", col_rank="position")[5] == pytest.approx(
        metrics.catalogue_coverage(recs, 40, 5))
    assert novelty(own["recs"], own["counts"], [5], col_item="item", col_rank="position")[5] == pytest.approx(
        metrics.novelty(recs, counts, 5))
    assert intra_list_diversity(own["recs"], own["genres"], [5], **cols)[5] == pytest.approx(
        metrics.intra_list_diversity(recs, genres, 5))


def test_only_users_with_training_items_are_ranked_and_only_known_pairs_are_rated(spark):
    """Every model is compared on the same users and rating rows: the ones a baseline can score."""
    silver = spark.createDataFrame(
        [(0, 0, 4.0, "train"), (0, 1, 3.0, "train"), (1, 1, 5.0, "train"),
         (0, 2, 2.0, "test"), (1, 0, 4.5, "test"), (2, 1, 1.0, "test"), (1, 3, None, "train")],
        "user_idx int, item_idx int, rating double, split string")
    train, test = rated_test_pairs(silver)
    assert train.count() == 3
    assert sorted(tuple(r) for r in test.select("user_idx", "item_idx").collect()) == [(1, 0)]  # item 2, user 2: new
    truth = spark.createDataFrame([(0, 2), (1, 0), (2, 1)], "user_idx int, item_idx int")
    seen = spark.createDataFrame([(0, [0, 1]), (1, [1])], "user_idx int, seen array<int>")
    assert sorted(tuple(r) for r in warm_truth(truth, seen).collect()) == [(0, 2), (1, 0)]


def _validation_set(seen: list[list[int]], relevant: list[set[int]]) -> validation.ValidationSet:
    return validation.ValidationSet(np.arange(len(seen)), relevant, [np.array(s, dtype=np.int64) for s in seen])


@pytest.mark.parametrize("relevant, expected", [({3}, 1.0), ({7}, 1 / math.log2(3))])
def test_validation_ndcg_breaks_ties_like_the_scorer(relevant, expected):
    """All scores equal: top_n_block orders the unseen items by item_idx, so the lowest comes first.

    torch.topk alone returns these five tied items as 19, 11, 7, 16, 3 (torch 2.13, CPU).
    """
    n_items, unseen = 20, [3, 7, 11, 16, 19]
    model = FactorModel(np.zeros((1, 4), np.float32), np.zeros((n_items, 4), np.float32), np.zeros(n_items, np.float32))
    seen = [i for i in range(n_items) if i not in unseen]
    assert validation.ndcg(model, _validation_set([seen], [relevant]), k=len(unseen)) == pytest.approx(expected)


def test_validation_ndcg_ranks_by_score_then_item_idx():
    """Reference order over the whole catalogue: score descending, then item_idx ascending, seen items left out."""
    rng = np.random.default_rng(5)
    n_users, n_items, k = 12, 30, 5
    # Small integer factors: exact float scores with many ties.
    model = FactorModel(rng.integers(0, 3, (n_users, 2)).astype(np.float32),
                        rng.integers(0, 3, (n_items, 2)).astype(np.float32), np.zeros(n_items, np.float32))
    seen = [sorted(rng.choice(n_items, rng.integers(0, 8), replace=False).tolist()) for _ in range(n_users)]
    relevant = [set(rng.choice(np.setdiff1d(np.arange(n_items), s), 3, replace=False).tolist()) for s in seen]
    scores = model.user_factors @ model.item_factors.T + model.item_bias
    expected = []
    for u in range(n_users):
        ranked = sorted((i for i in range(n_items) if i not in seen[u]), key=lambda i: (-scores[u, i], i))
        expected.append(metrics.ndcg_at_k(ranked, relevant[u], k))
    assert validation.ndcg(model, _validation_set(seen, relevant), k) == pytest.approx(float(np.mean(expected)))


def test_format_table_shows_a_dash_where_a_model_has_no_value():
    rows = [
        {"model": "model", "metric": "ndcg", "k": 10, "value": 0.25},
        {"model": "als", "metric": "ndcg", "k": 10, "value": 0.5},
        {"model": "als", "metric": "rmse", "k": 0, "value": 0.9},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["metric", "model", "als"]
    assert lines[1].split() == ["ndcg@10", "0.2500", "0.5000"]
    assert lines[2].split() == ["rmse", "-", "0.9000"]


def test_metrics_table_holds_model_and_baseline_rows(spark, pipeline_run):
    cfg, results = pipeline_run
    rows = tables.read(spark, cfg, tables.METRICS).where(F.col("ds") == PIPELINE_DS).collect()
    # the first night: no lists were served before it, so no feedback rows, only the backtest
    assert {r["model"] for r in rows} == {"model", "popularity", "als", "ease"}
    assert {r["model_version"] for r in rows} == {results["train"]["backtest"]["model_version"]}
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[(r["metric"], r["k"])] = r["value"]
    per_list = {"precision", "recall", "ndcg", "map", "hit_rate", "coverage", "novelty", "diversity"}
    for model, values in by_model.items():
        assert {(m, k) for m in per_list for k in (5, 10)} <= set(values), model
        assert all(0.0 <= values[(m, k)] <= 1.0 for m in per_list - {"novelty"} for k in (5, 10)), model
        assert values[("novelty", 10)] > 0.0
    assert 0.0 < by_model["als"][("rmse", 0)] < 4.0 and 0.0 < by_model["als"][("mae", 0)] <= by_model["als"][("rmse", 0)]
    # Popularity recommends the same few items to everyone: the least catalogue coverage, the least novelty.
    assert by_model["popularity"][("coverage", 10)] < min(by_model[m][("coverage", 10)] for m in ("als", "ease"))
    assert by_model["popularity"][("novelty", 10)] < min(by_model[m][("novelty", 10)] for m in ("als", "ease"))
    table = format_table(results["evaluate"])
    assert "ndcg@10" in table and "rmse" in table and "ease" in table.splitlines()[0]


def test_model_rating_error_is_the_rating_head_on_the_test_ratings(spark, pipeline_run):
    import numpy as np

    from lakerec.features import TEST, TRAIN
    from lakerec.models import FactorModel
    from lakerec.model_store import FACTORS_FILE, META_FILE, RATING_HEAD_FILE, models_root
    from lakerec.snapshot import Snapshot

    cfg, results = pipeline_run
    model_dir = models_root(cfg) / results["train"]["backtest"]["model_version"]  # the model evaluated
    history = json.loads((model_dir / META_FILE).read_text())["history"]
    assert all(h["rating_rmse"] > 0 for h in history)
    factors = FactorModel.load(model_dir / FACTORS_FILE)
    with np.load(model_dir / RATING_HEAD_FILE) as head:
        mean, user_bias, item_bias, weight = head["mean"], head["user_bias"], head["item_bias"], head["weight"]
    silver = Snapshot.load(spark, cfg, PIPELINE_DS).read(spark, cfg, tables.SILVER_INTERACTIONS)
    silver = silver.select("user_idx", "item_idx", "rating", "split").toPandas()
    train = silver[(silver["split"] == TRAIN) & silver["rating"].notna()]
    test = silver[(silver["split"] == TEST) & silver["user_idx"].isin(train["user_idx"]) & silver["item_idx"].isin(train["item_idx"])]
    assert len(test) > 0
    u, i = test["user_idx"].to_numpy(), test["item_idx"].to_numpy()
    predicted = mean + user_bias[u] + item_bias[i] + (factors.user_factors[u] * weight * factors.item_factors[i]).sum(1)
    errors = np.clip(predicted, cfg.source.rating_min, cfg.source.rating_max) - test["rating"].to_numpy()
    model_rows = {r["metric"]: r["value"] for r in results["evaluate"] if r["model"] == "model" and r["k"] == 0}
    assert model_rows == pytest.approx({"rmse": float(np.sqrt((errors ** 2).mean())), "mae": float(np.abs(errors).mean())},
                                       rel=1e-5)


def test_pipeline_writes_the_evaluation_report(pipeline_run):
    cfg, results = pipeline_run
    path = results["report"]
    text = path.read_text()
    assert f"ds={PIPELINE_DS}" in text and "ndcg@10" in text and "popularity" in text
    assert results["train"]["serving"]["model_version"] in text and results["train"]["backtest"]["model_version"] in text
    for png in ("metrics_at_k.png", "training.png", "popularity_bias.png"):
        image = path.parent / png
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in text
