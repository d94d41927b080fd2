"""Features: append-only id maps, latest-event dedupe, per-user temporal split, training examples."""
from pyspark.sql import functions as F

from conftest import make_config
from lakerec import features, ingest, tables
from lakerec.config import FeaturesConfig


def test_id_maps_are_stable_across_runs_with_new_keys(spark, source_copy, tmp_path):
    cfg = make_config(tmp_path, source_copy)
    ingest.run(spark, cfg, "2026-01-01")
    features.run(spark, cfg, "2026-01-01")
    users_before = {r["key"]: r["idx"] for r in tables.read(spark, cfg, tables.ID_MAP_USERS).collect()}
    items_before = {r["key"]: r["idx"] for r in tables.read(spark, cfg, tables.ID_MAP_ITEMS).collect()}
    assert sorted(users_before.values()) == list(range(len(users_before)))

    with (source_copy / "ratings.csv").open("a") as fh:
        fh.write("0000new,1,4.0,1700000000\n0000new,77777,4.0,1700000001\n")
    ingest.run(spark, cfg, "2026-01-02")
    result = features.run(spark, cfg, "2026-01-02")

    users_after = {r["key"]: (r["idx"], r["first_ds"]) for r in tables.read(spark, cfg, tables.ID_MAP_USERS).collect()}
    items_after = {r["key"]: (r["idx"], r["first_ds"]) for r in tables.read(spark, cfg, tables.ID_MAP_ITEMS).collect()}
    assert all(users_after[k][0] == v for k, v in users_before.items())
    assert all(items_after[k][0] == v for k, v in items_before.items())
    # "0000new" sorts before every old key but still gets the next index, not a reused one.
    assert users_after["0000new"] == (len(users_before), "2026-01-02")
    assert items_after["77777"] == (len(items_before), "2026-01-02")
    assert (result.new_users, result.new_items) == (1, 1)


def test_temporal_split_holds_out_each_users_latest(spark):
    fc = FeaturesConfig(test_fraction=0.25, val_fraction=0.25, min_user_interactions=4)
    rows = [(1, i, float(i), 100 + i) for i in range(8)] + [(2, i, 1.0, 5) for i in range(3)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, rating double, ts long")
    split = {(r["user_idx"], r["item_idx"]): r["split"] for r in features.temporal_split(df, fc).collect()}
    assert [split[(1, i)] for i in range(8)] == ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
    assert {split[(2, i)] for i in range(3)} == {"train"}  # too few interactions to hold any out


def test_silver_dedupes_latest_event_and_labels(spark):
    bronze = spark.createDataFrame(
        [("u", "a", 2.0, 10), ("u", "a", 5.0, 20), ("u", "b", 1.0, 5)],
        "user_key string, item_key string, rating double, ts long",
    )
    users = spark.createDataFrame([("u", 0)], "key string, idx int")
    items = spark.createDataFrame([("a", 0), ("b", 1)], "key string, idx int")
    fc = FeaturesConfig(positive_threshold=3.0, min_user_interactions=10)
    silver = {r["item_idx"]: r for r in features.build_silver(bronze, users, items, fc).collect()}
    assert silver[0]["rating"] == 5.0 and silver[0]["label"] == 1.0
    assert silver[1]["label"] == 0.0
    examples = features.training_examples(features.build_silver(bronze, users, items, fc))
    assert [(r["user_idx"], r["item_idx"]) for r in examples.collect()] == [(0, 0)]


def test_training_examples_are_train_positives_in_several_files(spark, tiny_source, tmp_path):
    cfg = make_config(tmp_path, tiny_source, "features.training_files=4")
    ingest.run(spark, cfg, "2026-01-01")
    result = features.run(spark, cfg, "2026-01-01")
    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS)
    examples = tables.read(spark, cfg, tables.TRAINING_EXAMPLES)
    assert examples.count() == silver.where((F.col("split") == "train") & (F.col("label") > 0)).count()
    assert result.split_sizes["test"] > 0
    assert len(examples.inputFiles()) == 4
