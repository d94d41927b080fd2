"""Metrics: Spark implementation vs pure-Python twins vs hand-computed values."""
import math
import random

import pytest
from pyspark.sql import functions as F

from conftest import PIPELINE_DS
from lakerec import metrics, tables
from lakerec.evaluate import format_table, ranking_metrics


def test_hand_computed_case():
    recs, relevant = ["a", "b", "c", "d"], {"b", "d", "z"}
    assert metrics.precision_at_k(recs, relevant, 4) == 0.5
    assert metrics.recall_at_k(recs, relevant, 4) == pytest.approx(2 / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(recs, relevant, 4) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert metrics.average_precision_at_k(recs, relevant, 4) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert metrics.hit_rate_at_k(recs, relevant, 1) == 0.0


def test_spark_metrics_equal_the_python_twins(spark):
    rng = random.Random(7)
    recs, truth = {}, {}
    for user in range(30):
        recs[user] = rng.sample(range(40), 12)
        truth[user] = set(rng.sample(range(40), rng.randint(1, 8)))
    recs[99] = [1, 2, 3]  # a user without test items does not count
    truth[98] = {5}  # a user without recommendations counts as zero
    recs_df = spark.createDataFrame(
        [(u, i, r + 1) for u, items in recs.items() for r, i in enumerate(items)], "user int, item int, rank int"
    )
    truth_df = spark.createDataFrame([(u, i) for u, items in truth.items() for i in items], "user int, item int")
    for k in (1, 5, 10):
        expected = metrics.mean_ranking_metrics(recs, truth, k)
        got = ranking_metrics(recs_df, truth_df, k)
        assert got == pytest.approx(expected)


def test_metrics_table_holds_model_and_baseline_rows(spark, pipeline_run):
    cfg, results = pipeline_run
    rows = tables.read(spark, cfg, tables.METRICS).where(F.col("ds") == PIPELINE_DS).collect()
    models = {r["model"] for r in rows}
    assert models == {"model", "popularity"}
    assert {(r["metric"], r["k"]) for r in rows} >= {("ndcg", 10), ("precision", 10), ("recall", 10), ("ndcg", 5)}
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    assert "ndcg@10" in format_table(results["evaluate"])
