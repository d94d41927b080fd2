"""Scoring: blocked top-N equals a full sort, seen items masked, reruns idempotent, gate blocks bad output."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pyspark.sql import functions as F

from conftest import PIPELINE_DS
from lakerec import features, score, tables
from lakerec.models import FactorModel, top_n_block
from lakerec.model_store import FACTORS_FILE, SERVING, latest_model_dir, models_root
from lakerec.snapshot import Snapshot


def test_top_n_block_matches_brute_force_sort():
    rng = np.random.default_rng(0)
    users, items, dim, n = 7, 50, 4, 10
    u, v, b = (rng.normal(size=s).astype(np.float32) for s in ((users, dim), (items, dim), (items,)))
    v[3] = v[4]  # an exact tie, broken by item_idx
    b[3] = b[4]
    seen = [rng.choice(items, size=k, replace=False) for k in (0, 3, 10, 45, 1, 2, 5)]
    lengths, flat = np.array([len(s) for s in seen]), np.concatenate(seen)
    values, top = top_n_block(torch.from_numpy(u), torch.from_numpy(v), torch.from_numpy(b), lengths, flat, n)
    full = u @ v.T + b
    for row in range(users):
        candidates = [i for i in range(items) if i not in set(seen[row])]
        expected = sorted(candidates, key=lambda i: (-full[row, i], i))[:n]
        got = [int(i) for i, s in zip(top[row], values[row]) if s != -np.inf]
        assert got == expected
        assert not set(got) & set(seen[row].tolist())


def test_items_tied_at_the_cut_get_in_by_lowest_item_idx():
    """Popularity ties often: of the items tied at the n-th score, the lowest item_idx get the slots."""
    counts = torch.tensor([4.0, 1, 3, 3, 1, 3, 1, 5, 3, 1])  # items 2, 3, 5, 8 tie for slots 3-5
    zeros = torch.zeros(2, 1)
    seen = np.array([3])  # user 1 has seen item 3
    for n, expected in ((4, [[7, 0, 2, 3], [7, 0, 2, 5]]), (7, [[7, 0, 2, 3, 5, 8, 1], [7, 0, 2, 5, 8, 1, 4]])):
        values, top = top_n_block(zeros, torch.zeros(10, 1), counts, np.array([0, 1]), seen, n)
        assert top.tolist() == expected
        assert np.array_equal(values, counts.numpy()[top])  # each item keeps its own score


def test_top_n_block_reuses_a_larger_buffer_and_never_returns_seen_items():
    rng = np.random.default_rng(1)
    users, items, dim, n = 5, 30, 3, 8
    u, v, b = (torch.from_numpy(rng.normal(size=s).astype(np.float32)) for s in ((users, dim), (items, dim), (items,)))
    lengths = np.array([0, 30, 25, 1, 4])  # user 1 has seen everything, user 2 all but 5
    flat = np.concatenate([rng.permutation(items)[:k] for k in lengths])
    buffer = torch.full((16, items), 7.0)
    values, top = top_n_block(u, v, b, lengths, flat, n, buffer)
    fresh_values, fresh_top = top_n_block(u, v, b, lengths, flat, n)
    np.testing.assert_array_equal(top, fresh_top)
    np.testing.assert_array_equal(values, fresh_values)
    assert np.isneginf(values[1]).all()
    assert (~np.isneginf(values[2])).sum() == 5
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for row in range(users):
        got = set(top[row][~np.isneginf(values[row])].tolist())
        assert not got & set(flat[offsets[row]:offsets[row + 1]].tolist())


def test_seen_lists_read_from_arrow_treat_nulls_as_empty_and_drop_items_unknown_to_the_model():
    seen = pa.array([[1, 2], None, [], [3, 99, 4], [99]], pa.list_(pa.int32())).slice(0)
    lengths, items = score._seen_csr(seen, n_items=10)
    assert lengths.tolist() == [2, 0, 0, 2, 0]
    assert items.tolist() == [1, 2, 3, 4]
    lengths, items = score._seen_csr(seen.slice(3), n_items=10)
    assert lengths.tolist() == [2, 0]
    assert items.tolist() == [3, 4]


def _recs(spark, cfg, ds=PIPELINE_DS):
    return tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == ds)


def _snap(spark, cfg, ds=PIPELINE_DS) -> Snapshot:
    """``ds``'s snapshot; for a night the pipeline did not run, the features job runs it first (same bronze)."""
    try:
        return Snapshot.load(spark, cfg, ds)
    except RuntimeError:
        features.run(spark, cfg, ds)
        return Snapshot.load(spark, cfg, ds)


def _serving_model(cfg, results) -> Path:
    """The night's serving model: what LATEST names and score.run uses by default."""
    model_dir = models_root(cfg) / results["train"][SERVING]["model_version"]
    assert latest_model_dir(cfg) == model_dir
    return model_dir


def _history_users(spark, cfg, snap):
    """user_idx of the users with positives in any split as of the night: those the serving model has rows for."""
    silver = snap.read(spark, cfg, tables.SILVER_INTERACTIONS)
    return silver.where(F.col("label") > 0).select("user_idx").distinct()


def test_every_user_with_history_gets_unseen_items_in_rank_order(spark, pipeline_run):
    """Unseen in any split: the serving model learnt every split, served lists leave all of them out."""
    cfg, _ = pipeline_run
    n = cfg.score.top_n
    snap = _snap(spark, cfg)
    recs = _recs(spark, cfg).where(F.col("reason") == score.MODEL_REASON).toPandas()
    silver = snap.read(spark, cfg, tables.SILVER_INTERACTIONS)
    users = snap.read(spark, cfg, tables.ID_MAP_USERS)
    items = snap.read(spark, cfg, tables.ID_MAP_ITEMS)
    seen = (silver.join(users.withColumnRenamed("idx", "user_idx").withColumnRenamed("key", "user_key"), "user_idx")
            .join(items.withColumnRenamed("idx", "item_idx").withColumnRenamed("key", "item_key"), "item_idx")
            .select("user_key", "item_key", "split", "label").toPandas())
    assert recs["user_key"].nunique() == seen.loc[seen["label"] > 0, "user_key"].nunique()
    seen_sets = seen.groupby("user_key")["item_key"].apply(set)
    n_items = items.count()
    for user, group in recs.groupby("user_key"):
        group = group.sort_values("rank")
        owed = min(n, n_items - len(seen_sets[user]))  # the tiny catalogue runs out for heavy users
        assert group["rank"].tolist() == list(range(1, owed + 1))
        assert group["item_key"].nunique() == owed
        assert (np.diff(group["score"].to_numpy()) <= 0).all()
        assert not set(group["item_key"]) & seen_sets[user]
    assert score.gate_failures(spark, cfg, _recs(spark, cfg), snap) == []  # what the gate's defect cases start from


def test_a_run_publishes_the_rows_it_staged_even_when_another_run_overwrites_staging(spark, pipeline_run,
                                                                                     monkeypatch):
    """Another score run stages its rows right after this run's write, before this run reads them back:
    this run still gates and publishes its own staged version (the hook stands in for the other run)."""
    cfg, _ = pipeline_run
    before = sorted(tuple(r) for r in _recs(spark, cfg).collect())
    write = tables.overwrite

    def other_run_stages_next(df, cfg_, table, tag=None):
        write(df, cfg_, table, tag)
        if table is tables.STAGING_RECOMMENDATIONS:
            write(df.limit(5).withColumn("item_key", F.lit("not-this-run")), cfg_, table)

    monkeypatch.setattr(tables, "overwrite", other_run_stages_next)
    score.run(spark, cfg, PIPELINE_DS)
    assert sorted(tuple(r) for r in _recs(spark, cfg).collect()) == before
    assert tables.read(spark, cfg, tables.STAGING_RECOMMENDATIONS).count() == 5  # the other run's rows


def _file_stats(cfg, table) -> list[dict]:
    """The statistics of every file a table's Delta log has added."""
    log = Path(table.path(cfg)) / "_delta_log"
    actions = [json.loads(line) for f in sorted(log.glob("*.json")) for line in f.read_text().splitlines()]
    return [json.loads(a["add"]["stats"]) for a in actions if "add" in a and a["add"].get("stats")]


def test_recommendation_files_carry_statistics_only_where_reads_use_them(spark, pipeline_run):
    cfg, _ = pipeline_run
    serving = _file_stats(cfg, tables.RECOMMENDATIONS)
    assert serving and all(set(s["minValues"]) == {"user_key"} for s in serving)
    assert all("minValues" not in s for s in _file_stats(cfg, tables.STAGING_RECOMMENDATIONS))


def test_users_without_positives_get_their_segment_or_the_popularity_fallback(spark, pipeline_run):
    cfg, _ = pipeline_run
    snap = _snap(spark, cfg)
    all_users = snap.read(spark, cfg, tables.ID_MAP_USERS).count()
    assert snap.read(spark, cfg, tables.USER_FEATURES).count() == all_users  # one night: its users are all users
    recs = _recs(spark, cfg)
    assert recs.select("user_key").distinct().count() == all_users
    cold = recs.where(F.col("reason").isin(score.SEGMENT_REASON, score.FALLBACK_REASON))
    history_users = _history_users(spark, cfg, snap).count()
    assert cold.select("user_key").distinct().count() == all_users - history_users


def test_users_newer_than_the_model_are_served_by_the_cold_start_method_minus_what_they_have_seen(
        spark, pipeline_run, tmp_path):
    """Features rerun after the model was trained: its last users have history but no model row."""
    cfg, results = pipeline_run
    snap = _snap(spark, cfg)
    good = _serving_model(cfg, results)
    older = tmp_path / "older-model"
    shutil.copytree(good, older)
    model = FactorModel.load(good / FACTORS_FILE)
    n_users = model.user_factors.shape[0] - 3
    FactorModel(model.user_factors[:n_users], model.item_factors, model.item_bias).save(older / FACTORS_FILE)

    recs = score.build_recommendations(spark, cfg, snap, older).cache()
    assert score.gate_failures(spark, cfg, recs, snap) == []
    history_users = _history_users(spark, cfg, snap)
    modelled = history_users.where(F.col("user_idx") < n_users).count()
    assert modelled == history_users.count() - 3
    all_users = snap.read(spark, cfg, tables.USER_FEATURES).count()
    assert recs.where(F.col("reason") != score.MODEL_REASON).select("user_key").distinct().count() == all_users - modelled
    newer = recs.where(F.col("reason").isin(score.FOLD_IN_REASON, score.BLEND_REASON, score.SEGMENT_REASON))
    assert newer.select("user_key").distinct().count() == 3  # they have positives: never the popularity fallback
    recs.unpersist()


def test_publish_gate_blocks_a_broken_model_and_keeps_the_last_good_output(spark, pipeline_run, tmp_path):
    cfg, results = pipeline_run
    _snap(spark, cfg, "2026-01-02")
    before = sorted(tuple(r) for r in tables.read(spark, cfg, tables.RECOMMENDATIONS).collect())
    good = _serving_model(cfg, results)
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
    """A later night scored by the last good serving model (no model trained for that night)."""
    cfg, results = pipeline_run
    _snap(spark, cfg, "2026-01-03")
    summary = score.run(spark, cfg, "2026-01-03", model_dir=_serving_model(cfg, results))
    assert summary["rows"] == _recs(spark, cfg, "2026-01-03").count() > 0
    assert _recs(spark, cfg).count() > 0  # the earlier ds is untouched


def test_a_night_without_its_own_serving_model_is_not_scored_with_another(spark, pipeline_run):
    """score.run uses the night's serving model by default, not LATEST: none trained for it, a clear error."""
    cfg, _ = pipeline_run
    _snap(spark, cfg, "2026-01-03")
    with pytest.raises(FileNotFoundError, match="no finished serving model"):
        score.run(spark, cfg, "2026-01-03")


def _with_coverage_floor(cfg, ratio):
    return dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, min_coverage_ratio=ratio))


def test_publish_gate_blocks_a_drop_in_catalogue_coverage(spark, pipeline_run, tmp_path):
    cfg, results = pipeline_run
    ds = "2026-01-05"
    snap = _snap(spark, cfg, ds)
    before = sorted(tuple(r) for r in tables.read(spark, cfg, tables.RECOMMENDATIONS).collect())
    good = _serving_model(cfg, results)
    same_for_everyone = tmp_path / "same-for-everyone"
    shutil.copytree(good, same_for_everyone)
    model = FactorModel.load(good / FACTORS_FILE)
    model.user_factors[:] = 0  # one global ranking by item bias: few distinct items across users
    model.item_bias[:] = -np.arange(len(model.item_bias), dtype=np.float32)
    model.save(same_for_everyone / FACTORS_FILE)
    strict = _with_coverage_floor(cfg, 1.0)

    with pytest.raises(score.PublishGateError, match="catalogue coverage .* below 100%"):
        score.run(spark, strict, ds, model_dir=same_for_everyone)

    staged = tables.read(spark, cfg, tables.STAGING_RECOMMENDATIONS)
    previous = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") < ds)
    last_ds = previous.agg(F.max("ds")).first()[0]
    previous_coverage = previous.where(F.col("ds") == last_ds).select("item_key").distinct().count()
    assert staged.select("item_key").distinct().count() < previous_coverage
    assert score.gate_failures(spark, _with_coverage_floor(cfg, 0.0), staged, snap) == []  # coverage was the only failure
    after = sorted(tuple(r) for r in tables.read(spark, cfg, tables.RECOMMENDATIONS).collect())
    assert after == before
    assert _recs(spark, cfg, ds).count() == 0


def _seen_item_in_first_slot(spark, cfg, recs):
    """Replace one user's rank-1 item with an item that user has in the test split (their latest)."""
    snap = _snap(spark, cfg)
    users = snap.read(spark, cfg, tables.ID_MAP_USERS).select(F.col("idx").alias("user_idx"), F.col("key").alias("user_key"))
    items = snap.read(spark, cfg, tables.ID_MAP_ITEMS).select(F.col("idx").alias("item_idx"), F.col("key").alias("item_key"))
    pair = (snap.read(spark, cfg, tables.SILVER_INTERACTIONS).where("split = 'test'")
            .join(users, "user_idx").join(items, "item_idx").join(recs.select("user_key").distinct(), "user_key")
            .orderBy("user_key", "item_key").select("user_key", "item_key").first())
    hit = (F.col("user_key") == pair["user_key"]) & (F.col("rank") == 1)
    return recs.withColumn("item_key", F.when(hit, F.lit(pair["item_key"])).otherwise(F.col("item_key")))


def _item_outside_the_catalogue(spark, cfg, recs):
    """One user's rank-1 item replaced by a key the night's catalogue does not hold."""
    user = recs.select(F.min("user_key")).first()[0]
    hit = (F.col("user_key") == user) & (F.col("rank") == 1)
    return recs.withColumn("item_key", F.when(hit, F.lit("no-such-item")).otherwise(F.col("item_key")))


def _one_user_short(spark, cfg, recs):
    user = recs.select(F.min("user_key")).first()[0]
    return recs.where(~((F.col("user_key") == user) & (F.col("rank") == cfg.score.top_n)))


def _one_user_missing(spark, cfg, recs):
    return recs.where(F.col("user_key") != recs.select(F.min("user_key")).first()[0])


def _null_item(spark, cfg, recs):
    return recs.withColumn("item_key", F.when(F.col("rank") == 2, F.lit(None)).otherwise(F.col("item_key")))


def _infinite_score(spark, cfg, recs):
    return recs.withColumn("score", F.when(F.col("rank") == 3, F.lit(float("inf"))).otherwise(F.col("score")))


@pytest.mark.parametrize("defect, message", [
    (_seen_item_in_first_slot, "1 recommendations are items the user already has"),
    (_item_outside_the_catalogue, f"1 recommendations are items outside the catalogue of {PIPELINE_DS}"),
    (_one_user_short, "1 users do not have exactly min"),
    (_one_user_missing, "1 users are missing"),
    (_null_item, "rows have nulls"),
    (_infinite_score, "rows have non-finite scores"),
])
def test_publish_gate_names_each_defect_of_otherwise_good_output(spark, pipeline_run, defect, message):
    cfg, _ = pipeline_run
    snap = _snap(spark, cfg)
    good = _recs(spark, cfg)  # passes the gate (test_every_user_with_history_gets_unseen_items_in_rank_order)
    failures = score.gate_failures(spark, cfg, defect(spark, cfg, good), snap)
    assert any(message in f for f in failures), failures
