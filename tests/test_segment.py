"""User segments: one per user per night, a rerun replaces them, the choice of k finds planted clusters, and the
text block is standardised on the executors as the model block is on the driver."""
from dataclasses import replace

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import PIPELINE_DS
from lakerec import segment, tables
from lakerec.config import load_config
from lakerec.models import FactorModel
from lakerec.snapshot import Snapshot

GROUPS, PER_GROUP, ITEMS_PER_GROUP = 3, 10, 4
DAY = 86_400


def _planted(spark):
    """Three groups of users, each far apart in the model and liking its own items (with their own texts);
    one more user past the model's rows whose positives are group 2's items (a fold-in)."""
    rng = np.random.default_rng(7)
    centers = 6.0 * np.eye(GROUPS, 4, dtype=np.float32)
    user_group = np.repeat(np.arange(GROUPS), PER_GROUP)
    item_group = np.repeat(np.arange(GROUPS), ITEMS_PER_GROUP)
    model = FactorModel(
        centers[user_group] + rng.normal(0, 0.3, (len(user_group), 4)).astype(np.float32),
        centers[item_group] + rng.normal(0, 0.3, (len(item_group), 4)).astype(np.float32),
        np.zeros(len(item_group), np.float32),
    )
    cold_user = len(user_group)
    owners = [*user_group.tolist(), 2]
    history = [
        (u, int(i), 1.0, 1_700_000_000 + day * DAY)
        for u, g in enumerate(owners) for day, i in enumerate(rng.choice(np.flatnonzero(item_group == g), 3, replace=False))
    ]
    texts = np.eye(GROUPS, 8)[item_group] + rng.normal(0, 0.05, (len(item_group), 8))
    text = spark.createDataFrame([(i, [float(x) for x in row]) for i, row in enumerate(texts)], segment.TEXT_SCHEMA)
    frame = spark.createDataFrame(history, "user_idx int, item_idx int, label float, ts bigint")
    return model, frame, text, owners, cold_user


def test_the_choice_of_k_finds_planted_clusters(spark):
    cfg = load_config("local", overrides=["segment.k_grid=[2, 3, 4]"])
    model, history, text, owners, cold_user = _planted(spark)

    result = segment.segment_users(spark, cfg, model, history, text)

    assert result.k == 3 and set(result.silhouettes) == {2, 3, 4}
    assert result.silhouette == max(result.silhouettes.values()) > 0.6
    found = {r["user_idx"]: r["segment"] for r in result.assignments.collect()}
    assert sorted(found) == list(range(len(owners)))
    by_group = {g: {found[u] for u, owner in enumerate(owners) if owner == g} for g in range(GROUPS)}
    assert all(len(s) == 1 for s in by_group.values()) and len(set.union(*by_group.values())) == GROUPS
    assert found[cold_user] == next(iter(by_group[2]))
    assert result.sizes == [PER_GROUP + 1, PER_GROUP, PER_GROUP]  # numbered by size: the group with the cold user is 0
    assert found[cold_user] == 0


def _segments(spark, cfg, ds):
    return tables.read(spark, cfg, tables.USER_SEGMENTS).where(F.col("ds") == ds)


def test_every_user_has_one_segment_per_night_and_a_rerun_replaces_them(spark, pipeline_run):
    cfg, results = pipeline_run
    users = Snapshot.load(spark, cfg, PIPELINE_DS).read(spark, cfg, tables.USER_FEATURES).select("user_key", "user_idx")
    segments = _segments(spark, cfg, PIPELINE_DS)
    assert sorted(segments.select("user_key", "user_idx").collect()) == sorted(users.collect())
    profiles = tables.read(spark, cfg, tables.SEGMENT_PROFILES).where(F.col("ds") == PIPELINE_DS).collect()
    summary = results["segment"]
    assert sorted(r["size"] for r in profiles) == sorted(summary["sizes"]) and sum(summary["sizes"]) == users.count()
    assert all(r["top_items"] and r["top_genres"] and r["mean_activity"] > 0 for r in profiles)
    report = results["report"].read_text()
    assert "## Segments" in report and "(segments.png)" in report
    assert (results["report"].parent / "segments.png").read_bytes()[:4] == b"\x89PNG"

    rerun = segment.run(spark, replace(cfg, segment=replace(cfg.segment, k=2)), PIPELINE_DS)

    assert rerun["k"] == 2
    again = _segments(spark, cfg, PIPELINE_DS)
    assert again.count() == users.count() == again.select("user_key").distinct().count()
    assert {r["segment"] for r in again.select("segment").distinct().collect()} == {0, 1}
    profiles = tables.read(spark, cfg, tables.SEGMENT_PROFILES).where(F.col("ds") == PIPELINE_DS)
    assert sorted(r["segment"] for r in profiles.collect()) == [0, 1]


def test_segments_off_write_nothing(spark, pipeline_run):
    cfg, _ = pipeline_run
    versions = {t: tables.version(spark, cfg, t) for t in (tables.USER_SEGMENTS, tables.SEGMENT_PROFILES)}

    result = segment.run(spark, replace(cfg, segment=replace(cfg.segment, enabled=False)), PIPELINE_DS)

    assert result == {"ds": PIPELINE_DS, "enabled": False}
    assert {t: tables.version(spark, cfg, t) for t in versions} == versions


def test_the_text_block_is_standardised_on_the_executors_as_the_model_block_is_on_the_driver(spark):
    """Same events at one time per user (weights 1): each user's block is the plain mean of their items' texts,
    standardised over the users asked for who have a text, exactly as :func:`segment.standardised` does."""
    rng = np.random.default_rng(11)
    texts = rng.normal(0, 1, (6, 5))
    texts[:, 4] = 2.0  # a dimension that never varies: 0 for everyone
    owned = {0: [0, 1], 1: [2], 2: [3, 4, 5], 3: [1, 5], 4: [6], 5: [0, 3]}  # user 4's item has no text
    history = spark.createDataFrame([(u, i, 1.0, 1_700_000_000 + u) for u, items in owned.items() for i in items],
                                    "user_idx int, item_idx int, label float, ts bigint")
    text = spark.createDataFrame([(i, [float(x) for x in row]) for i, row in enumerate(texts)], segment.TEXT_SCHEMA)
    users = spark.createDataFrame([(u,) for u in range(5)], "user_idx int")  # user 5 is not asked for
    cfg = load_config("local")

    block, width = segment.text_block(cfg, history, text, users)

    got = {r["user_idx"]: r["meaning"] for r in block.collect()}
    assert width == 5 and sorted(got) == [0, 1, 2, 3]
    means = np.array([texts[owned[u]].mean(axis=0) for u in range(5) if u != 4] + [np.zeros(5)])
    expected = segment.standardised(means, np.array([True, True, True, True, False]))
    assert np.allclose([got[u] for u in range(4)], expected[:4]) and np.allclose(expected[:4, 4], 0.0)


def test_fewer_than_three_users_make_one_segment_and_none_make_none(spark):
    model, history, text, owners, _ = _planted(spark)
    cfg = load_config("local")
    two = spark.createDataFrame([(0,), (PER_GROUP,)], "user_idx int")  # one user of group 0, one of group 1

    result = segment.segment_users(spark, cfg, model, history, text, users=two)

    rows = sorted(result.assignments.collect())
    assert [(r["user_idx"], r["segment"]) for r in rows] == [(0, 0), (PER_GROUP, 0)]
    assert result.k == 1 and result.sizes == [2] and result.silhouette is None
    assert rows[0]["distance"] == pytest.approx(rows[1]["distance"]) and rows[0]["distance"] > 0  # both half-way

    none = segment.segment_users(spark, cfg, model, history, text, users=spark.createDataFrame([], "user_idx int"))

    assert none.assignments.count() == 0 and none.sizes == []
