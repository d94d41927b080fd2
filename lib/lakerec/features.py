"""Features: stable id maps, silver interactions with a per-user temporal split, training examples."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import tables
from lakerec.config import Config, FeaturesConfig

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = "train", "validation", "test"


@dataclass
class FeaturesResult:
    users: int
    items: int
    new_users: int
    new_items: int
    split_sizes: dict[str, int]
    training_examples: int


def extend_id_map(existing: DataFrame | None, keys: DataFrame, ds: str) -> DataFrame:
    """Rows to append to an id map: keys not yet mapped get the next dense indices, in key order.

    Existing keys keep their index forever (the map is append-only), so model rows stay aligned
    with ids across runs.
    """
    keys = keys.select(F.col("key").cast("string")).distinct()
    if existing is None:
        start = F.lit(0)
        new = keys
    else:
        start = F.lit(existing.agg(F.coalesce(F.max("idx") + 1, F.lit(0))).first()[0])
        new = keys.join(existing.select("key"), "key", "left_anti")
    # A single ordered window: id assignment is rare and small next to the interaction data.
    idx = start + F.row_number().over(Window.orderBy("key")) - 1
    return new.select("key", idx.cast("int").alias("idx"), F.lit(ds).alias("first_ds"))


def _update_id_map(spark: SparkSession, cfg: Config, table: tables.Table, keys: DataFrame, ds: str) -> int:
    existing = tables.read(spark, cfg, table) if tables.exists(spark, cfg, table) else None
    new = extend_id_map(existing, keys, ds).cache()
    added = new.count()
    if existing is None:
        tables.overwrite(new, cfg, table)
    elif added:
        tables.append(new, cfg, table)
    new.unpersist()
    return added


def label_column(fc: FeaturesConfig):
    """Implicit label: 1.0 for a positive interaction under the configured rule, else 0.0."""
    if fc.positive_threshold is None:
        return F.lit(1.0).cast("float")
    return F.when(F.col("rating") >= fc.positive_threshold, 1.0).otherwise(0.0).cast("float")


def temporal_split(interactions: DataFrame, fc: FeaturesConfig) -> DataFrame:
    """Per user, hold out the latest ``test_fraction`` of interactions for test, the next
    ``val_fraction`` for validation; the rest is train. Users with fewer than
    ``min_user_interactions`` keep everything in train. Ties on ``ts`` break on ``item_idx``.
    """
    by_recency = Window.partitionBy("user_idx").orderBy(F.col("ts").desc_nulls_last(), F.col("item_idx").desc())
    n = F.count(F.lit(1)).over(Window.partitionBy("user_idx"))
    rank = F.row_number().over(by_recency)
    eligible = n >= fc.min_user_interactions
    n_test = F.greatest(F.floor(n * fc.test_fraction), F.lit(1))
    n_val = F.floor(n * fc.val_fraction)
    split = (
        F.when(~eligible, F.lit(TRAIN))
        .when(rank <= n_test, F.lit(TEST))
        .when(rank <= n_test + n_val, F.lit(VALIDATION))
        .otherwise(F.lit(TRAIN))
    )
    return interactions.withColumn("split", split)


def build_silver(bronze: DataFrame, users: DataFrame, items: DataFrame, fc: FeaturesConfig) -> DataFrame:
    """Bronze events -> one row per (user_idx, item_idx), latest event wins, labelled and split."""
    joined = (
        bronze.join(users.select(F.col("key").alias("user_key"), F.col("idx").alias("user_idx")), "user_key")
        .join(items.select(F.col("key").alias("item_key"), F.col("idx").alias("item_idx")), "item_key")
    )
    latest = Window.partitionBy("user_idx", "item_idx").orderBy(F.col("ts").desc_nulls_last(), F.col("rating").desc_nulls_last())
    deduped = (
        joined.withColumn("_rn", F.row_number().over(latest)).where("_rn = 1")
        .select("user_idx", "item_idx", "rating", "ts")
        .withColumn("label", label_column(fc))
    )
    return temporal_split(deduped, fc)


def training_examples(silver: DataFrame) -> DataFrame:
    """Positive train interactions, the rows the trainer streams through Petastorm."""
    return silver.where((F.col("split") == TRAIN) & (F.col("label") > 0)).select("user_idx", "item_idx", "label")


def run(spark: SparkSession, cfg: Config, ds: str) -> FeaturesResult:
    bronze = tables.read(spark, cfg, tables.BRONZE_INTERACTIONS)
    bronze_items = tables.read(spark, cfg, tables.BRONZE_ITEMS)
    new_users = _update_id_map(spark, cfg, tables.ID_MAP_USERS, bronze.select(F.col("user_key").alias("key")), ds)
    item_keys = bronze_items.select(F.col("item_key").alias("key")).union(bronze.select(F.col("item_key").alias("key")))
    new_items = _update_id_map(spark, cfg, tables.ID_MAP_ITEMS, item_keys, ds)

    users = tables.read(spark, cfg, tables.ID_MAP_USERS)
    items = tables.read(spark, cfg, tables.ID_MAP_ITEMS)
    silver = build_silver(bronze, users, items, cfg.features)
    tables.overwrite(silver, cfg, tables.SILVER_INTERACTIONS)

    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS)
    examples = training_examples(silver)
    # Hash-partition by user and sort inside each file: the file set is deterministic for a given
    # silver table, which the trainer's reproducibility relies on.
    examples = examples.repartition(cfg.features.training_files, "user_idx").sortWithinPartitions("user_idx", "item_idx")
    tables.overwrite(examples, cfg, tables.TRAINING_EXAMPLES)

    split_sizes = {r["split"]: r["count"] for r in silver.groupBy("split").count().collect()}
    result = FeaturesResult(
        users=users.count(),
        items=items.count(),
        new_users=new_users,
        new_items=new_items,
        split_sizes=split_sizes,
        training_examples=tables.read(spark, cfg, tables.TRAINING_EXAMPLES).count(),
    )
    log.info("features %s: %s", ds, result)
    return result
