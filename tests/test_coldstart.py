"""Cold start: fold-in is the model's history term, content vectors land near their look-alikes, and
each user is served by the path (``reason``) they should be, segments or not."""
import dataclasses
import shutil

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from conftest import PIPELINE_DS
from lakerec import coldstart, score, tables
from lakerec.config import resolve_path
from lakerec.model_store import FACTORS_FILE, SERVING, models_root
from lakerec.models import FactorModel, MatrixFactorization
from lakerec.snapshot import Snapshot


def test_fold_in_equals_the_models_history_mean():
    torch.manual_seed(0)
    model = MatrixFactorization(n_users=4, n_items=12, dim=5)
    owners = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    items = torch.tensor([1, 4, 7, 2, 0, 11, 3, 5, 8, 9])
    recency = np.array([0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.0, 0.3, 0.6, 1.0], np.float32)
    weights = coldstart.history_weights(recency, decay=5.0)
    model.set_history(owners, items, torch.from_numpy(weights))
    expected = model.history_mean(torch.arange(4)).detach().numpy()
    folded = coldstart.fold_in(model.item.weight.detach().numpy(), owners.numpy(), items.numpy(), weights, 4)
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-6)


def test_a_cold_item_with_a_warm_items_content_ranks_next_to_it():
    """Item vectors that follow their content: the ridge map gives the cold copy of item 7 about item 7's vector."""
    rng = np.random.default_rng(0)
    n_items, n_content, dim = 200, 24, 8
    content = rng.normal(size=(n_items + 1, n_content)).astype(np.float32)
    content[n_items] = content[7]  # the cold item: item 7's text and genres
    truth = rng.normal(size=(n_content, dim + 1)) / np.sqrt(n_content)
    targets = (content @ truth + 0.001 * rng.normal(size=(n_items + 1, dim + 1))).astype(np.float32)
    warm = np.arange(n_items + 1) < n_items
    model = FactorModel(rng.normal(size=(30, dim)).astype(np.float32), targets[:n_items, :dim], targets[:n_items, dim])
    mapped = coldstart.with_content_items(model, content, warm, l2=0.1)
    assert mapped.item_factors.shape == (n_items + 1, dim)
    np.testing.assert_array_equal(mapped.item_factors[:n_items], model.item_factors)  # warm items keep theirs
    scores = mapped.user_factors @ mapped.item_factors.T + mapped.item_bias
    ranks = np.argsort(np.argsort(-scores, axis=1), axis=1)
    assert np.abs(ranks[:, n_items] - ranks[:, 7]).max() <= 2  # next to it, of 201 items


def _cold(segment: list[int], positives: list[int]) -> coldstart.ColdUsers:
    """Cold users 0..n-1 with these segments (-1: none) and positive counts (items 0, 1, ...)."""
    owners = np.repeat(np.arange(len(positives)), positives)
    items = np.concatenate([np.arange(p) for p in positives])
    return coldstart.ColdUsers(np.arange(len(segment)), np.array(segment), owners, items, np.ones(len(owners), np.float32))


def test_each_user_takes_the_path_their_data_allows():
    cold = _cold(segment=[0, -1, 1, -1], positives=[2, 3, 0, 0])
    assert cold.reasons("blend").tolist() == ["blend", "fold_in", "segment", "popularity_fallback"]
    assert cold.reasons("segment").tolist() == ["segment", "fold_in", "segment", "popularity_fallback"]
    assert cold.reasons("fold_in").tolist() == ["fold_in", "fold_in", "segment", "popularity_fallback"]
    no_segments = _cold(segment=[-1, -1], positives=[2, 0])
    for method in ("blend", "segment", "fold_in"):
        assert no_segments.reasons(method).tolist() == ["fold_in", "popularity_fallback"]


def test_blend_weighs_the_two_paths_in_standardised_units():
    rng = np.random.default_rng(1)
    n_items, dim = 40, 6
    model = FactorModel(np.zeros((1, dim), np.float32), rng.normal(size=(n_items, dim)).astype(np.float32),
                        rng.normal(size=n_items).astype(np.float32))
    segment_counts = rng.integers(0, 50, size=(n_items, 2)).astype(np.float32)
    counts = segment_counts.sum(axis=1)
    cold = _cold(segment=[1, 1, 1], positives=[3, 3, 3])
    reasons = np.array(["fold_in", "segment", "blend"], object)
    catalogue = np.arange(n_items)
    built = coldstart.cold_user_model(model, cold, reasons, segment_counts, counts, catalogue, 0.0, 0.3)
    scores = built.user_factors @ built.item_factors.T + built.item_bias
    fold, seg = scores[0], scores[1]
    np.testing.assert_allclose(seg, coldstart.segment_scores(segment_counts, counts)[:, 1], rtol=1e-6)
    expected = 0.3 * fold / fold.std() + 0.7 * seg / seg.std()
    np.testing.assert_allclose(scores[2] - scores[2].mean(), expected - expected.mean(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- through the scorer

UNKNOWN = 2  # the model is cut short by this many users: the last ones have positives but no vector


@pytest.fixture(scope="module")
def night(spark, pipeline_run, tmp_path_factory):
    """The pipeline's night in a private warehouse, changed so every path has a user (and one cold item):
    user 0 has no positives but a segment, user 1 neither, the last two are unknown to the model (the
    second-to-last with a segment); item ``cold`` lost its positives and took item ``twin``'s content."""
    cfg, results = pipeline_run
    root = tmp_path_factory.mktemp("coldstart")
    shutil.copytree(resolve_path(cfg.warehouse), root / "warehouse")
    cfg = dataclasses.replace(cfg, warehouse=str(root / "warehouse"))
    snap = Snapshot.load(spark, cfg, PIPELINE_DS)
    model = FactorModel.load(models_root(pipeline_run[0]) / results["train"][SERVING]["model_version"] / FACTORS_FILE)
    n_users = model.user_factors.shape[0] - UNKNOWN
    examples = snap.read(spark, cfg, tables.SERVING_EXAMPLES)
    listed = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == PIPELINE_DS).groupBy("item_key").count()
    item_idx = snap.read(spark, cfg, tables.ID_MAP_ITEMS).select(F.col("key").alias("item_key"), F.col("idx").alias("item_idx"))
    twin = listed.join(item_idx, "item_key").orderBy(F.desc("count"), "item_idx").first()["item_idx"]  # in most lists
    counts = examples.where(F.col("item_idx") != twin).groupBy("item_idx").count().toPandas()
    cold = int(counts.sort_values(["count", "item_idx"])["item_idx"].iloc[0])  # the fewest positives: the fewest masks
    kept = examples.where(~F.col("user_idx").isin(0, 1) & (F.col("item_idx") != cold)).toPandas()
    tables.overwrite(spark.createDataFrame(kept, tables.SERVING_EXAMPLES.schema), cfg, tables.SERVING_EXAMPLES)
    items = snap.read(spark, cfg, tables.ITEM_FEATURES)
    twin_genres = items.where(F.col("item_idx") == twin).first()["genre_vector"]
    items = items.withColumn("genre_vector", F.when(F.col("item_idx") == cold, F.array(*map(F.lit, twin_genres)))
                             .otherwise(F.col("genre_vector")).cast("array<float>")).toPandas()
    tables.overwrite(spark.createDataFrame(items, tables.ITEM_FEATURES.schema), cfg, tables.ITEM_FEATURES)
    keys = {r["idx"]: r["key"] for r in snap.read(spark, cfg, tables.ID_MAP_ITEMS).collect()}
    text = tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).toPandas()
    twin_text = text.loc[text["item_key"] == keys[twin], "embedding"].iloc[0]
    text.loc[text["item_key"] == keys[cold], "embedding"] = text.loc[text["item_key"] == keys[cold], "embedding"].map(
        lambda _: twin_text)
    tables.overwrite(spark.createDataFrame(text, tables.ITEM_TEXT_EMBEDDINGS.schema), cfg, tables.ITEM_TEXT_EMBEDDINGS)
    versions = {**snap.versions, **{t.qualified: tables.version(spark, cfg, t)
                                    for t in (tables.SERVING_EXAMPLES, tables.ITEM_FEATURES)}}
    tables.replace_where(spark.createDataFrame([(PIPELINE_DS, t, v) for t, v in versions.items()], tables.MANIFEST.schema),
                         cfg, tables.MANIFEST, tables.equals(ds=PIPELINE_DS))
    users = snap.read(spark, cfg, tables.USER_FEATURES).select("user_idx", "user_key")
    last = users.agg(F.max("user_idx")).first()[0]
    segments = users.where(~F.col("user_idx").isin(1, last)).select(
        F.lit(PIPELINE_DS).alias("ds"), "user_key", "user_idx", (F.col("user_idx") % 3).alias("segment"),
        F.lit(0.0).alias("distance"))
    tables.replace_where(segments, cfg, tables.USER_SEGMENTS, tables.equals(ds=PIPELINE_DS))
    model_dir = root / "model-cut-short"
    model_dir.mkdir()
    FactorModel(model.user_factors[:n_users], model.item_factors, model.item_bias).save(model_dir / FACTORS_FILE)
    return cfg, Snapshot.load(spark, cfg, PIPELINE_DS), model_dir, {"last": last, "twin": twin, "cold": cold}


def _with(cfg, **coldstart):
    return dataclasses.replace(cfg, coldstart=dataclasses.replace(cfg.coldstart, **coldstart))


def _reasons(recs) -> dict[str, str]:
    """{user_key: reason} of built recommendations (one reason per user)."""
    pdf = recs.select("user_key", "reason").distinct().toPandas()
    assert pdf["user_key"].is_unique
    return dict(zip(pdf["user_key"], pdf["reason"]))


def _user_keys(spark, cfg, snap) -> dict[int, str]:
    """{user_idx: user_key} of the night's users."""
    return {r["user_idx"]: r["user_key"] for r in snap.read(spark, cfg, tables.USER_FEATURES).collect()}


def test_each_reason_is_served_when_it_should_be_and_the_gate_passes(spark, night):
    cfg, snap, model_dir, at = night
    keys = _user_keys(spark, cfg, snap)
    recs = score.build_recommendations(spark, _with(cfg, users="blend"), snap, model_dir).cache()
    reasons = _reasons(recs)
    assert reasons[keys[0]] == score.SEGMENT_REASON  # no positives, a segment
    assert reasons[keys[1]] == score.FALLBACK_REASON  # nothing at all
    assert reasons[keys[at["last"] - 1]] == score.BLEND_REASON  # unknown to the model, positives and a segment
    assert reasons[keys[at["last"]]] == score.FOLD_IN_REASON  # unknown to the model, no segment
    assert {r for u, r in reasons.items() if u not in {keys[i] for i in (0, 1, at["last"] - 1, at["last"])}} == {
        score.MODEL_REASON}
    assert score.gate_failures(spark, cfg, recs, snap) == []
    recs.unpersist()


@pytest.mark.parametrize("change, unknown_with_segment, positive_less_with_segment", [
    ({"users": "segment"}, score.SEGMENT_REASON, score.SEGMENT_REASON),
    ({"users": "fold_in"}, score.FOLD_IN_REASON, score.SEGMENT_REASON),
    ({"users": "blend", "segments_off": True}, score.FOLD_IN_REASON, score.FALLBACK_REASON),
])
def test_the_configured_method_and_its_fallback_without_segments(spark, night, change, unknown_with_segment,
                                                                  positive_less_with_segment):
    cfg, snap, model_dir, at = night
    if change.pop("segments_off", False):
        cfg = dataclasses.replace(cfg, segment=dataclasses.replace(cfg.segment, enabled=False))
    keys = _user_keys(spark, cfg, snap)
    reasons = _reasons(score.build_recommendations(spark, _with(cfg, **change), snap, model_dir))
    assert reasons[keys[at["last"] - 1]] == unknown_with_segment
    assert reasons[keys[0]] == positive_less_with_segment
    assert reasons[keys[1]] == score.FALLBACK_REASON


def test_a_cold_item_with_a_warm_items_content_is_listed_next_to_it(spark, night):
    cfg, snap, model_dir, at = night
    items = {r["idx"]: r["key"] for r in snap.read(spark, cfg, tables.ID_MAP_ITEMS).collect()}
    recs = score.build_recommendations(spark, _with(cfg, content_l2=1e-4), snap, model_dir)
    lists = recs.where(F.col("reason") == score.MODEL_REASON).toPandas()
    ranks = lists.pivot_table(index="user_key", columns="item_key", values="rank")
    both = ranks[[items[at["twin"]], items[at["cold"]]]].dropna()
    assert len(both) > 0
    assert (both[items[at["twin"]]] - both[items[at["cold"]]]).abs().max() == 1
