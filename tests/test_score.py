"""Scoring: blocked top-N equals a full sort, seen items masked, reruns idempotent, gate blocks bad output."""
import shutil

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from conftest import PIPELINE_DS
from lakerec import score, tables
from lakerec.models import FactorModel
from lakerec.train import FACTORS_FILE, latest_model_dir


def test_top_n_block_matches_brute_force_sort():
    rng = np.random.default_rng(0)
    users, items, dim, n = 7, 50, 4, 10
    u, v, b = (rng.normal(size=s).astype(np.float32) for s in ((users, dim), (items, dim), (items,)))
    v[3] = v[4]  # an exact tie, broken by item_idx
    b[3] = b[4]
    seen = [rng.choice(items, size=k, replace=False) for k in (0, 3, 10, 45, 1, 2, 5)]
    values, top = score.top_n_block(torch.from_numpy(u), torch.from_numpy(v), torch.from_numpy(b), seen, n)
    full = u @ v.T + b
    for row in range(users):
        candidates = [i for i in range(items) if i not in set(seen[row])]
        expected = sorted(candidates, key=lambda i: (-full[row, i], i))[:n]
        got = [int(i) for i, s in zip(top[row], values[row]) if s != -np.inf]
        assert got == expected
        assert not set(got) & set(seen[row].tolist())


def _recs(spark, cfg, ds=PIPELINE_DS):
    return tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == ds)


def test_every_user_with_history_gets_n_unseen_items_in_rank_order(spark, pipeline_run):
    cfg, _ = pipeline_run
    n = cfg.score.top_n
    recs = _recs(spark, cfg).where(F.col("reason") == score.MODEL_REASON).toPandas()
    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS).where("split = 'train'")
    users = tables.read(spark, cfg, tables.ID_MAP_USERS)
    items = tables.read(spark, cfg, tables.ID_MAP_ITEMS)
    seen = (silver.join(users.withColumnRenamed("idx", "user_idx").withColumnRenamed("key", "user_key"), "user_idx")
            .join(items.withColumnRenamed("idx", "item_idx").withColumnRenamed("key", "item_key"), "item_idx")
            .select("user_key", "item_key").toPandas())
    assert recs["user_key"].nunique() == seen["user_key"].nunique()
    seen_sets = seen.groupby("user_key")["item_key"].apply(set)
    for user, group in recs.groupby("user_key"):
        group = group.sort_values("rank")
        assert group["rank"].tolist() == list(range(1, n + 1))
        assert group["item_key"].nunique() == n
        assert (np.diff(group["score"].to_numpy()) <= 0).all()
        assert not set(group["item_key"]) & seen_sets[user]


def test_rerun_of_same_ds_leaves_identical_rows(spark, pipeline_run):
    cfg, _ = pipeline_run
    before = sorted(tuple(r) for r in _recs(spark, cfg).collect())
    score.run(spark, cfg, PIPELINE_DS)
    after = sorted(tuple(r) for r in _recs(spark, cfg).collect())
    assert after == before
    assert tables.read(spark, cfg, tables.RECOMMENDATIONS).count() == len(before)


def test_cold_users_get_the_popularity_fallback(spark, pipeline_run):
    cfg, _ = pipeline_run
    all_users = tables.read(spark, cfg, tables.ID_MAP_USERS).count()
    recs = _recs(spark, cfg)
    assert recs.select("user_key").distinct().count() == all_users
    fallback = recs.where(F.col("reason") == score.FALLBACK_REASON)
    train_users = tables.read(spark, cfg, tables.SILVER_INTERACTIONS).where("split = 'train'").select("user_idx").distinct().count()
    assert fallback.select("user_key").distinct().count() == all_users - train_users


def test_publish_gate_blocks_a_broken_model_and_keeps_the_last_good_output(spark, pipeline_run, tmp_path):
    cfg, _ = pipeline_run
    before = sorted(tuple(r) for r in tables.read(spark, cfg, tables.RECOMMENDATIONS).collect())
    good = latest_model_dir(cfg)
    broken = tmp_path / "broken-model"
    shutil.copytree(good, broken)
    model = FactorModel.load(good / FACTORS_FILE)
    model.item_factors[::2] = np.nan
    model.save(broken / FACTORS_FILE)

    with pytest.raises(score.PublishGateError, match="nulls|non-finite"):
        score.run(spark, cfg, PIPELINE_DS, model_dir=broken)
    with pytest.raises(score.PublishGateError):
        score.run(spark, cfg, "2026-01-02", model_dir=broken)

    after = sorted(tuple(r) for r in tables.read(spark, cfg, tables.RECOMMENDATIONS).collect())
    assert after == before


def test_publish_gate_passes_a_good_run_for_a_new_ds(spark, pipeline_run):
    cfg, _ = pipeline_run
    summary = score.run(spark, cfg, "2026-01-03")
    assert summary["rows"] == _recs(spark, cfg, "2026-01-03").count() > 0
    assert _recs(spark, cfg).count() > 0  # the earlier ds is untouched
