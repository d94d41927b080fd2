"""Features: append-only id maps, latest-event dedupe, per-user temporal split, training examples."""
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from lakerec import features, ingest, tables
from lakerec.config import FeaturesConfig


@pytest.mark.slow
def test_id_maps_are_stable_across_runs_with_new_keys(spark, tmp_path):
    """Existing keys keep their index; a new key gets the next one, even when it sorts before them all.
    (End to end over two nights and a backfill: test_nightly.py.)"""
    cfg = make_config(tmp_path, tmp_path)
    keys = lambda *k: spark.createDataFrame([(x,) for x in k], "key string")  # noqa: E731
    assert features.update_id_map(spark, cfg, tables.ID_MAP_USERS, keys("u3", "u1", "u2", "u1", None), "2026-01-01") == 3
    before = {r["key"]: r["idx"] for r in tables.read(spark, cfg, tables.ID_MAP_USERS).collect()}
    assert before == {"u1": 0, "u2": 1, "u3": 2}
    assert features.update_id_map(spark, cfg, tables.ID_MAP_USERS, keys("u2", "0000new"), "2026-01-02") == 1
    after = {r["key"]: (r["idx"], r["first_ds"]) for r in tables.read(spark, cfg, tables.ID_MAP_USERS).collect()}
    assert all(after[k][0] == v for k, v in before.items())
    assert after["0000new"] == (3, "2026-01-02")
    assert features.update_id_map(spark, cfg, tables.ID_MAP_USERS, keys("u1"), "2026-01-03") == 0  # nothing to add


def test_temporal_split_holds_out_each_users_latest(spark):
    fc = FeaturesConfig(test_fraction=0.25, val_fraction=0.25, min_user_interactions=4)
    rows = [(1, i, float(i), 100 + i) for i in range(8)] + [(2, i, 1.0, 5) for i in range(3)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, rating double, ts long")
    split = {(r["user_idx"], r["item_idx"]): r["split"] for r in features.temporal_split(df, fc).collect()}
    assert [split[(1, i)] for i in range(8)] == ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
    assert {split[(2, i)] for i in range(3)} == {"train"}  # too few interactions to hold any out


def test_training_examples_place_each_example_in_its_users_history(spark):
    """recency: 0 for a user's oldest train positive, 1 for the newest, ties on ts by item; 1 without ts."""
    rows = [(0, 5, 30), (0, 3, 10), (0, 9, 20), (0, 1, 20), (0, 7, 40), (1, 2, None), (1, 4, None), (2, 6, 50)]
    silver = spark.createDataFrame(
        [(u, i, 4.0, float(i != 7), ts, "test" if i == 7 else "train") for u, i, ts in rows],
        "user_idx int, item_idx int, rating double, label float, ts long, split string",
    )
    recency = {(r["user_idx"], r["item_idx"]): r["recency"] for r in features.training_examples(silver).collect()}
    # user 0: item 7 is held out; ts 10, 20, 20, 30 -> items 3, 1, 9 (tie on ts: lower item first), 5
    assert recency == pytest.approx({(0, 3): 0.0, (0, 1): 1 / 3, (0, 9): 2 / 3, (0, 5): 1.0,
                                     (1, 2): 1.0, (1, 4): 1.0, (2, 6): 1.0})


def test_silver_dedupes_latest_event_and_labels(spark):
    bronze = spark.createDataFrame(
        [("u", "a", 2.0, None, 10), ("u", "a", 5.0, None, 20), ("u", "b", 1.0, None, 5), ("u", "c", 4.0, 0.0, 6)],
        "user_key string, item_key string, rating double, weight double, ts long",
    )
    users = spark.createDataFrame([("u", 0)], "key string, idx int")
    items = spark.createDataFrame([("a", 0), ("b", 1), ("c", 2)], "key string, idx int")
    fc = FeaturesConfig(positive_threshold=3.0, min_user_interactions=10)
    silver = {r["item_idx"]: r for r in features.build_silver(bronze, users, items, fc).collect()}
    assert silver[0]["rating"] == 5.0 and silver[0]["label"] == 1.0
    assert silver[1]["label"] == 0.0
    assert silver[2]["label"] == 0.0  # an implicit weight of 0 is never a positive
    examples = features.training_examples(features.build_silver(bronze, users, items, fc))
    assert [(r["user_idx"], r["item_idx"]) for r in examples.collect()] == [(0, 0)]


@pytest.mark.slow
def test_training_examples_are_train_positives_in_several_files(spark, tiny_source, tmp_path):
    cfg = make_config(tmp_path, tiny_source, "features.training_files=4")
    ingest.run(spark, cfg, "2026-01-01")
    result = features.run(spark, cfg, "2026-01-01")
    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS)
    examples = tables.read(spark, cfg, tables.TRAINING_EXAMPLES)
    assert examples.count() == silver.where((F.col("split") == "train") & (F.col("label") > 0)).count()
    assert result.split_sizes["test"] > 0
    assert len(examples.inputFiles()) == 4
    assert examples.where(F.col("rating").isNull()).count() == 0  # every MovieLens example keeps its rating


@pytest.mark.slow
def test_features_rewrite_a_table_left_by_an_older_schema(spark, tiny_source, tmp_path):
    """A warehouse from before training_examples had a rating column is upgraded by the next run."""
    cfg = make_config(tmp_path, tiny_source)
    spark.createDataFrame([(0, 0, 1.0)], "user_idx int, item_idx int, label float").write.format("delta").save(
        tables.TRAINING_EXAMPLES.path(cfg))
    ingest.run(spark, cfg, "2026-01-01")
    features.run(spark, cfg, "2026-01-01")
    examples = tables.read(spark, cfg, tables.TRAINING_EXAMPLES)
    assert examples.columns == [f.name for f in tables.TRAINING_EXAMPLES.schema.fields]
    assert examples.count() > 1


def test_temporal_split_with_latest_k(spark):
    fc = FeaturesConfig(test_k=2, min_user_interactions=3)
    df = spark.createDataFrame([(1, i, 1.0, 100 + i) for i in range(6)], "user_idx int, item_idx int, rating double, ts long")
    split = {r["item_idx"]: r["split"] for r in features.temporal_split(df, fc).collect()}
    assert [split[i] for i in range(6)] == ["train"] * 4 + ["test"] * 2


def test_random_split_is_stratified_per_user_and_seeded(spark):
    fc = FeaturesConfig(split="random_user", test_fraction=0.25, min_user_interactions=1, split_seed=42)
    rows = [(u, i, 1.0, None) for u in range(20) for i in range(u + 4)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, rating double, ts long")
    first = features.random_split(df, fc).collect()
    by_user = {}
    for r in first:
        by_user.setdefault(r["user_idx"], []).append(r["split"])
    for user, splits in by_user.items():
        n = user + 4
        assert splits.count("train") == int(n * 0.75 + 0.5)  # Spark rounds half up
    assert sorted(map(tuple, features.random_split(df, fc).collect())) == sorted(map(tuple, first))
    other = features.random_split(df, FeaturesConfig(split="random_user", test_fraction=0.25, min_user_interactions=1, split_seed=7))
    assert sorted(map(tuple, other.collect())) != sorted(map(tuple, first))


def test_global_time_split_uses_one_cutoff(spark):
    fc = FeaturesConfig(split="global_time", test_fraction=0.2, val_fraction=0.2)
    rows = [(i % 7, i, 1.0, 1000 + i) for i in range(100)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, rating double, ts long")
    out = features.global_time_split(df, fc).collect()
    test_ts = [r["ts"] for r in out if r["split"] == "test"]
    train_ts = [r["ts"] for r in out if r["split"] == "train"]
    val_ts = [r["ts"] for r in out if r["split"] == "validation"]
    assert max(train_ts) < min(val_ts) and max(val_ts) < min(test_ts)
    assert 15 <= len(test_ts) <= 25 and 15 <= len(val_ts) <= 25


def test_kcore_filter_iterates_to_a_fixed_point(spark):
    # user 2 has 1 interaction; removing it leaves item 12 with 1; removing that leaves user 1 with 2.
    rows = [(1, 10), (1, 11), (1, 12), (2, 12), (3, 10), (3, 11), (4, 10), (4, 11)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int")
    kept = {(r["user_idx"], r["item_idx"]) for r in features.kcore_filter(df, 2).collect()}
    assert kept == {(1, 10), (1, 11), (3, 10), (3, 11), (4, 10), (4, 11)}


@pytest.mark.slow
def test_item_and_user_features(spark, tiny_source, tmp_path):
    cfg = make_config(tmp_path, tiny_source)
    ingest.run(spark, cfg, "2026-01-01")
    features.run(spark, cfg, "2026-01-01")
    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS).where("split = 'train'")
    vocab = [r["key"] for r in tables.read(spark, cfg, tables.GENRE_VOCABULARY).orderBy("idx").collect()]
    items = {r["item_idx"]: r for r in tables.read(spark, cfg, tables.ITEM_FEATURES).collect()}
    assert len(items) == tables.read(spark, cfg, tables.ID_MAP_ITEMS).count()
    top = silver.groupBy("item_idx").agg(F.count("*").alias("n"), F.avg("rating").alias("mean")).orderBy(F.desc("n")).first()
    assert items[top["item_idx"]]["popularity"] == top["n"]
    assert abs(items[top["item_idx"]]["mean_rating"] - top["mean"]) < 1e-9
    some = items[top["item_idx"]]
    assert [vocab[i] for i, v in enumerate(some["genre_vector"]) if v == 1.0] == [g for g in vocab if g in some["genres"]]
    users = tables.read(spark, cfg, tables.USER_FEATURES).collect()
    active = [u for u in users if u["n_interactions"] > 0]
    assert all(len(u["genre_affinity"]) == len(vocab) and max(u["genre_affinity"]) <= 1.0 for u in users)
    assert all(u["days_since_last"] > 0 for u in active)
    quality = {r["metric"]: r["value"] for r in tables.read(spark, cfg, tables.DATA_QUALITY).where("stage = 'features'").collect()}
    assert quality["silver_interactions_out"] == tables.read(spark, cfg, tables.SILVER_INTERACTIONS).count()
    assert 0 < quality["density"] < 1
