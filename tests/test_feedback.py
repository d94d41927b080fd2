"""The feedback loop on hand-built examples: which events count as the next day's truth, and the
metrics of served lists against it."""
import math

import pytest

from conftest import make_config
from lakerec import feedback, tables
from lakerec.snapshot import end_of_day

PREVIOUS, TONIGHT = "2026-03-01", "2026-03-02"


def test_served_lists_are_scored_on_returning_users(spark):
    lists = spark.createDataFrame(
        [("a", "i1", 1), ("a", "i2", 2), ("a", "i3", 3), ("b", "i4", 1), ("b", "i5", 2), ("b", "i6", 3),
         ("d", "i1", 1)],
        "user_key string, item_key string, rank int")
    # a hits i2 at rank 2 and misses i9; b misses; c was not served (not returning); d did nothing.
    truth = spark.createDataFrame([("a", "i2"), ("a", "i9"), ("b", "i7"), ("c", "i1")], "user_key string, item_key string")

    rows = {(m, k): v for m, k, v in feedback.list_metrics(lists, truth, [3])}

    ndcg_a = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert rows[("returning_users", 0)] == 2
    assert rows[("hit_rate", 3)] == pytest.approx(0.5)
    assert rows[("recall", 3)] == pytest.approx((1 / 2 + 0) / 2)
    assert rows[("ndcg", 3)] == pytest.approx(ndcg_a / 2)


def test_the_truth_is_what_arrived_tonight_and_happened_since_last_night(spark, tiny_source, tmp_path):
    cfg = make_config(tmp_path, tiny_source)
    since, until = end_of_day(PREVIOUS), end_of_day(TONIGHT)
    rows = [
        ("u1", "new", 4.0, since + 10, TONIGHT),  # counts
        ("u1", "null_ts", 4.0, None, TONIGHT),  # counts: no time, arrived tonight
        ("u1", "old_event", 4.0, since - 10, TONIGHT),  # happened before last night's lists
        ("u1", "future", 4.0, until, TONIGHT),  # after the end of tonight
        ("u1", "yesterday", 4.0, since + 20, PREVIOUS),  # arrived in the previous drop
        ("u2", "weak", 1.0, since + 30, TONIGHT),  # not a positive under features.positive_threshold
    ]
    bronze = spark.createDataFrame(
        [("tiny", u, i, r, None, ts, ds, "f") for u, i, r, ts, ds in rows],
        "source string, user_key string, item_key string, rating double, weight double, ts long, "
        "ingest_ds string, raw_file string")
    tables.merge_insert(spark, bronze, cfg, tables.BRONZE_INTERACTIONS)
    cfg = make_config(tmp_path, tiny_source, "features.positive_threshold=3.5")

    got = {(r["user_key"], r["item_key"]) for r in feedback.arrivals(spark, cfg, PREVIOUS, TONIGHT).collect()}

    assert got == {("u1", "new"), ("u1", "null_ts")}
