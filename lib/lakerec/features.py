"""Features: stable id maps, silver interactions with honest splits, item/user features, training examples."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import embed, faults, quality, snapshot, tables
from lakerec.config import Config, FeaturesConfig

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
SECONDS_PER_DAY = 86_400.0


@dataclass
class FeaturesResult:
    users: int
    items: int
    new_users: int
    new_items: int
    split_sizes: dict[str, int]
    training_examples: int


# ---------------------------------------------------------------- id maps

def extend_id_map(existing: DataFrame | None, keys: DataFrame, ds: str) -> DataFrame:
    """Rows to append to an id map: keys not yet mapped get the next dense indices, in key order.

    Existing keys keep their index forever (the map is append-only), so model rows stay aligned
    with ids across runs.
    """
    keys = keys.select(F.col("key").cast("string")).where(F.col("key").isNotNull()).distinct()
    if existing is None:
        start = F.lit(0)
        new = keys
    else:
        start = F.lit(existing.agg(F.coalesce(F.max("idx") + 1, F.lit(0))).first()[0])
        new = keys.join(existing.select("key"), "key", "left_anti")
    # A single ordered window: id assignment is rare and small next to the interaction data.
    idx = start + F.row_number().over(Window.orderBy("key")) - 1
    return new.select("key", idx.cast("int").alias("idx"), F.lit(ds).alias("first_ds"))


def update_id_map(spark: SparkSession, cfg: Config, table: tables.Table, keys: DataFrame, ds: str) -> int:
    """Append unseen ``keys`` to ``table``; returns how many were added.

    Exclusive (:func:`tables.append_numbered`): two runs extending the map at once never commit the
    same index twice or the same key twice; the later one renumbers from what the first committed.
    """
    return tables.append_numbered(spark, cfg, table, lambda existing: extend_id_map(existing, keys, ds))


# ---------------------------------------------------------------- silver

def label_column(fc: FeaturesConfig) -> Column:
    """Implicit label: 1.0 for a positive under the configured rule, else 0.0."""
    positive = F.col("weight").isNull() | (F.col("weight") > 0)
    if fc.positive_threshold is not None:
        positive = positive & (F.col("rating") >= fc.positive_threshold)
    return F.when(positive, 1.0).otherwise(0.0).cast("float")


def kcore_filter(interactions: DataFrame, k: int, max_rounds: int = 20) -> DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions until none remain."""
    current = interactions
    for _ in range(max_rounds):
        users = current.groupBy("user_idx").count().where(F.col("count") >= k).select("user_idx")
        items = current.groupBy("item_idx").count().where(F.col("count") >= k).select("item_idx")
        filtered = current.join(users, "user_idx", "left_semi").join(items, "item_idx", "left_semi").localCheckpoint()
        if filtered.count() == current.count():
            return filtered
        current = filtered
    return current


def _held_out(rank: Column, n_test: Column, n_val: Column, eligible: Column) -> Column:
    return (
        F.when(~eligible, F.lit(TRAIN))
        .when(rank <= n_test, F.lit(TEST))
        .when(rank <= n_test + n_val, F.lit(VALIDATION))
        .otherwise(F.lit(TRAIN))
    )


def temporal_split(interactions: DataFrame, fc: FeaturesConfig) -> DataFrame:
    """Per user, hold out the latest ``test_fraction`` (or ``test_k``) for test, the next
    ``val_fraction`` for validation; the rest is train. Users with fewer than
    ``min_user_interactions`` keep everything in train. Ties on ``ts`` break on ``item_idx``.
    """
    by_recency = Window.partitionBy("user_idx").orderBy(F.col("ts").desc_nulls_last(), F.col("item_idx").desc())
    n = F.count(F.lit(1)).over(Window.partitionBy("user_idx"))
    n_test = F.lit(fc.test_k) if fc.test_k else F.greatest(F.floor(n * fc.test_fraction), F.lit(1))
    n_val = F.floor(n * fc.val_fraction)
    split = _held_out(F.row_number().over(by_recency), n_test, n_val, n >= fc.min_user_interactions)
    return interactions.withColumn("split", split)


def random_split(interactions: DataFrame, fc: FeaturesConfig) -> DataFrame:
    """Stratified random split per user with a seed (the Microsoft Recommenders protocol):
    each user keeps round((1 - test - val) * n) interactions in train."""
    order = Window.partitionBy("user_idx").orderBy(F.xxhash64(F.lit(fc.split_seed), "user_idx", "item_idx"), "item_idx")
    n = F.count(F.lit(1)).over(Window.partitionBy("user_idx"))
    n_train = F.round(n * (1 - fc.test_fraction - fc.val_fraction))
    n_val = F.round(n * fc.val_fraction)
    n_test = n - n_train - n_val
    split = _held_out(F.row_number().over(order), n_test, n_val, n >= fc.min_user_interactions)
    return interactions.withColumn("split", split)


def global_time_split(interactions: DataFrame, fc: FeaturesConfig) -> DataFrame:
    """One cutoff in time for everyone: the latest ``test_fraction`` of all interactions is test,
    the ``val_fraction`` before it validation."""
    test_cut, val_cut = interactions.agg(
        F.percentile_approx("ts", 1 - fc.test_fraction, 10_000),
        F.percentile_approx("ts", 1 - fc.test_fraction - fc.val_fraction, 10_000),
    ).first()
    split = (
        F.when(F.col("ts") > test_cut, F.lit(TEST))
        .when((F.col("ts") > val_cut) & F.lit(fc.val_fraction > 0), F.lit(VALIDATION))
        .otherwise(F.lit(TRAIN))
    )
    return interactions.withColumn("split", split)


def split_interactions(interactions: DataFrame, fc: FeaturesConfig, has_timestamps: bool) -> DataFrame:
    """Apply the configured splitter; without timestamps only the random split is honest."""
    if not has_timestamps or fc.split == "random_user":
        return random_split(interactions, fc)
    if fc.split == "global_time":
        return global_time_split(interactions, fc)
    return temporal_split(interactions, fc)


def dedupe_latest(bronze: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """Bronze events -> one row per (user_idx, item_idx): the latest event wins."""
    joined = (
        bronze.join(users.select(F.col("key").alias("user_key"), F.col("idx").alias("user_idx")), "user_key")
        .join(items.select(F.col("key").alias("item_key"), F.col("idx").alias("item_idx")), "item_key")
    )
    latest = Window.partitionBy("user_idx", "item_idx").orderBy(F.col("ts").desc_nulls_last(), F.col("rating").desc_nulls_last())
    return (
        joined.withColumn("_rn", F.row_number().over(latest)).where("_rn = 1")
        .select("user_idx", "item_idx", "rating", "weight", "ts")
    )


def build_silver(bronze: DataFrame, users: DataFrame, items: DataFrame, fc: FeaturesConfig, has_timestamps: bool = True) -> DataFrame:
    """Deduped, labelled, optionally k-cored and split interactions."""
    deduped = dedupe_latest(bronze, users, items).withColumn("label", label_column(fc))
    if fc.kcore:
        deduped = kcore_filter(deduped, fc.kcore)
    return split_interactions(deduped, fc, has_timestamps)


def training_examples(silver: DataFrame, splits: tuple[str, ...] = (TRAIN,)) -> DataFrame:
    """Positive interactions of ``splits`` with their rating and recency, the rows the trainer streams through
    Petastorm: the train split for the backtest model, every split (all history) for the serving model.

    ``recency`` places each example in its user's history: 0 the oldest, 1 the newest
    (ties on ``ts`` break on ``item_idx``, as in the split). Users without timestamps get 1 everywhere,
    so recency weighting (``train.recency_decay``) leaves them unweighted.
    """
    positives = silver.where(F.col("split").isin(*splits) & (F.col("label") > 0))
    user = Window.partitionBy("user_idx")
    position = F.row_number().over(user.orderBy(F.col("ts").asc_nulls_first(), "item_idx")) - 1
    n = F.count(F.lit(1)).over(user)
    recency = (
        F.when(F.max("ts").over(user).isNull() | (n == 1), F.lit(1.0))
        .otherwise(position / (n - 1))
        .cast("float")
    )
    return positives.select("user_idx", "item_idx", "label", "rating", recency.alias("recency"))


# ---------------------------------------------------------------- item and user features

def _vector(vocab: list[str], contains) -> Column:
    return F.array(*[contains(g) for g in vocab]).cast("array<float>")


def item_features(items_map: DataFrame, bronze_items: DataFrame | None, train: DataFrame, vocab: list[str]) -> DataFrame:
    """Per item: popularity and rating stats from train only (no test leakage), genres, year."""
    stats = train.groupBy("item_idx").agg(
        F.count("*").alias("popularity"),
        F.count("rating").alias("rating_count"),
        F.avg("rating").alias("mean_rating"),
    )
    df = items_map.select(F.col("idx").alias("item_idx"), F.col("key").alias("item_key"))
    if bronze_items is not None:
        df = df.join(bronze_items.select("item_key", "genres", "year"), "item_key", "left")
    else:
        df = df.withColumn("genres", F.lit(None).cast("array<string>")).withColumn("year", F.lit(None).cast("int"))
    df = df.withColumn("genres", F.coalesce("genres", F.array().cast("array<string>")))
    df = df.join(stats, "item_idx", "left").fillna(0, ["popularity", "rating_count"])
    return df.withColumn("genre_vector", _vector(vocab, lambda g: F.array_contains("genres", g).cast("float")))


def user_features(users_map: DataFrame, train: DataFrame, items: DataFrame, vocab: list[str], ds: str) -> DataFrame:
    """Per user: activity, mean rating, days from their last event to the end of ``ds`` (never negative:
    the night sees no later event), genre affinity (share of train interactions per genre)."""
    stats = train.groupBy("user_idx").agg(
        F.count("*").alias("n_interactions"),
        F.sum("label").cast("long").alias("n_positives"),
        F.avg("rating").alias("mean_rating"),
        F.min("ts").alias("first_ts"),
        F.max("ts").alias("last_ts"),
    )
    shares = (
        train.join(items.select("item_idx", "genres"), "item_idx")
        .select("user_idx", F.explode("genres").alias("genre"))
        .groupBy("user_idx", "genre").count()
        .join(stats.select("user_idx", "n_interactions"), "user_idx")
        .groupBy("user_idx")
        .agg(F.map_from_entries(F.collect_list(F.struct("genre", F.col("count") / F.col("n_interactions")))).alias("shares"))
    )
    run_ts = F.lit(snapshot.end_of_day(ds))
    df = users_map.select(F.col("idx").alias("user_idx"), F.col("key").alias("user_key"))
    df = df.join(stats, "user_idx", "left").join(shares, "user_idx", "left").fillna(0, ["n_interactions", "n_positives"])
    return df.select(
        "user_idx", "user_key", "n_interactions", "n_positives", "mean_rating", "first_ts", "last_ts",
        ((run_ts - F.col("last_ts")) / SECONDS_PER_DAY).alias("days_since_last"),
        _vector(vocab, lambda g: F.coalesce(F.element_at("shares", F.lit(g)), F.lit(0.0))).alias("genre_affinity"),
    )


# ---------------------------------------------------------------- the job

def _night_inputs(spark: SparkSession, cfg: Config, ds: str) -> tuple[DataFrame, DataFrame | None]:
    """Bronze interactions and items as they stood at the end of ``ds``: what this night may see."""
    bronze = snapshot.arrived_by(tables.read(spark, cfg, tables.BRONZE_INTERACTIONS), ds)
    if not tables.exists(spark, cfg, tables.BRONZE_ITEMS):
        return bronze, None
    return bronze, tables.read(spark, cfg, tables.BRONZE_ITEMS).where(F.col("ingest_ds") <= ds)


def _update_id_maps(spark: SparkSession, cfg: Config, bronze: DataFrame, bronze_items: DataFrame | None,
                    ds: str) -> tuple[int, int, DataFrame, DataFrame]:
    """Extend the id maps with this night's keys; returns (new users, new items, users, catalogue).

    The maps are append-only and shared by every night; ``users`` and the catalogue are the rows of
    the keys this night has seen (a backfill leaves out keys that first arrived later).
    """
    user_keys = bronze.select(F.col("user_key").alias("key"))
    item_keys = bronze.select(F.col("item_key").alias("key"))
    if bronze_items is not None:
        item_keys = item_keys.union(bronze_items.select(F.col("item_key").alias("key")))
    new_users = update_id_map(spark, cfg, tables.ID_MAP_USERS, user_keys, ds)
    new_items = update_id_map(spark, cfg, tables.ID_MAP_ITEMS, item_keys, ds)
    genres = (bronze_items.select(F.explode("genres").alias("key")) if bronze_items is not None
              else spark.createDataFrame([], "key string"))
    update_id_map(spark, cfg, tables.GENRE_VOCABULARY, genres, ds)
    users = tables.read(spark, cfg, tables.ID_MAP_USERS).join(user_keys.distinct(), "key", "left_semi")
    items = tables.read(spark, cfg, tables.ID_MAP_ITEMS).join(item_keys.distinct(), "key", "left_semi")
    return new_users, new_items, users, items


def _write_examples(cfg: Config, silver: DataFrame) -> int:
    """Backtest (train split) and serving (every split) examples; returns the backtest count.

    Hash-partitioned by user and sorted inside each file: the file set is deterministic for a given
    silver table, which the trainer's reproducibility relies on.
    """
    fc = cfg.features
    for table, splits in ((tables.TRAINING_EXAMPLES, (TRAIN,)), (tables.SERVING_EXAMPLES, SPLITS)):
        examples = training_examples(silver, splits).repartition(fc.training_files, "user_idx")
        tables.overwrite(examples.sortWithinPartitions("user_idx", "item_idx"), cfg, table)
    return tables.read(silver.sparkSession, cfg, tables.TRAINING_EXAMPLES).count()


@faults.job("features")
def run(spark: SparkSession, cfg: Config, ds: str) -> FeaturesResult:
    """Build ``ds``'s snapshot from what had arrived by its end, then commit its manifest last.

    A crash between commits leaves the previous manifest in force; a rerun converges to a clean run.
    """
    fc = cfg.features
    bronze, bronze_items = _night_inputs(spark, cfg, ds)
    new_users, new_items, users, items = _update_id_maps(spark, cfg, bronze, bronze_items, ds)
    has_ts = bronze.where(F.col("ts").isNotNull()).limit(1).count() > 0
    tables.overwrite(build_silver(bronze, users, items, fc, has_ts), cfg, tables.SILVER_INTERACTIONS)
    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS)
    train = silver.where(F.col("split") == TRAIN)

    vocab = [r["key"] for r in tables.read(spark, cfg, tables.GENRE_VOCABULARY).orderBy("idx").collect()]
    tables.overwrite(item_features(items, bronze_items, train, vocab), cfg, tables.ITEM_FEATURES)
    item_feats = tables.read(spark, cfg, tables.ITEM_FEATURES)
    tables.overwrite(user_features(users, train, item_feats, vocab, ds), cfg, tables.USER_FEATURES)
    n_examples = _write_examples(cfg, silver)
    snapshot.write_manifest(spark, cfg, ds)

    split_sizes = {r["split"]: r["count"] for r in silver.groupBy("split").count().collect()}
    result = FeaturesResult(users.count(), items.count(), new_users, new_items, split_sizes, n_examples)
    n_silver = sum(split_sizes.values())
    quality.record(spark, cfg, ds, "features", {
        "bronze_interactions_in": bronze.count(),
        "silver_interactions_out": n_silver,
        "users": result.users,
        "items": result.items,
        "new_users": new_users,
        "new_items": new_items,
        "density": n_silver / max(result.users * result.items, 1),
        "training_examples": n_examples,
        "genres": len(vocab),
        **{f"split_{name}": count for name, count in split_sizes.items()},
    })
    log.info("features %s: %s", ds, result)
    return result


def side_features(spark: SparkSession, cfg: Config, n_users: int, n_items: int,
                  snap: snapshot.Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """Dense side-feature matrices for the hybrid model, rows by user_idx / item_idx.

    Users: genre affinity and log activity. Items: genre multi-hot, scaled year, log popularity
    and the text embedding as of the night (zeros where an item has none). Catalogue- and user-sized, never
    interaction-sized.
    """
    users = snap.read(spark, cfg, tables.USER_FEATURES).where(F.col("user_idx") < n_users)
    user_pdf = users.select("user_idx", "genre_affinity", F.log1p("n_interactions").alias("activity")).toPandas()
    n_genres = len(user_pdf["genre_affinity"].iloc[0]) if len(user_pdf) else 0
    user_side = np.zeros((n_users, n_genres + 1), np.float32)
    idx = user_pdf["user_idx"].to_numpy()
    if len(idx):
        user_side[idx, :n_genres] = np.stack(user_pdf["genre_affinity"].to_numpy())
        user_side[idx, n_genres] = user_pdf["activity"].to_numpy() / 10.0

    items = snap.read(spark, cfg, tables.ITEM_FEATURES).where(F.col("item_idx") < n_items)
    year = F.coalesce((F.col("year") - 1990) / 30.0, F.lit(0.0))
    text = embed.embeddings_by(spark, cfg, snap.ds)
    if text is not None:
        items = items.join(text, "item_key", "left")
    else:
        items = items.withColumn("embedding", F.lit(None).cast("array<float>"))
    item_pdf = items.select("item_idx", "genre_vector", year.alias("year"), F.log1p("popularity").alias("pop"), "embedding").toPandas()
    n_item_genres = len(item_pdf["genre_vector"].iloc[0]) if len(item_pdf) else 0
    has_text = item_pdf["embedding"].notna()
    text_dim = len(item_pdf.loc[has_text, "embedding"].iloc[0]) if has_text.any() else 0
    item_side = np.zeros((n_items, n_item_genres + 2 + text_dim), np.float32)
    idx = item_pdf["item_idx"].to_numpy()
    if len(idx):
        item_side[idx, :n_item_genres] = np.stack(item_pdf["genre_vector"].to_numpy())
        item_side[idx, n_item_genres] = item_pdf["year"].to_numpy()
        item_side[idx, n_item_genres + 1] = item_pdf["pop"].to_numpy() / 10.0
        if text_dim:
            rows = item_pdf.loc[has_text]
            item_side[rows["item_idx"].to_numpy(), n_item_genres + 2:] = np.stack(rows["embedding"].to_numpy())
    return user_side, item_side
