"""Table contracts and Delta I/O: every table lakerec reads or writes is declared here, once.

Writers go through :func:`overwrite`, :func:`replace_where` or :func:`merge_insert`, which conform
the DataFrame to the declared schema first, so a stage cannot silently change a contract.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from lakerec import faults
from lakerec.conflicts import CONFLICT_ATTEMPTS, CONFLICTS, retrying
from lakerec.config import Config, resolve_path

log = logging.getLogger(__name__)

# Column names the evaluation shares with these tables, declared once (metrics take them as overrides).
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
RANK = "rank"
RATING = "rating"
PREDICTION = "prediction"


@dataclass(frozen=True)
class Table:
    layer: str
    name: str
    schema: StructType
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.layer}.{self.name}"

    def path(self, cfg: Config) -> str:
        return f"{resolve_path(cfg.warehouse)}/{self.layer}/{self.name}"


def _schema(*fields: tuple) -> StructType:
    return StructType([StructField(name, dtype, nullable) for name, dtype, nullable in fields])


BRONZE_INTERACTIONS = Table(
    "bronze", "interactions",
    _schema(
        ("source", StringType(), False),
        ("user_key", StringType(), False),
        ("item_key", StringType(), False),
        ("rating", DoubleType(), True),
        ("weight", DoubleType(), True),
        ("ts", LongType(), True),
        ("ingest_ds", StringType(), False),
        ("raw_file", StringType(), False),
    ),
    key=("source", "user_key", "item_key", "ts"),
)

BRONZE_ITEMS = Table(
    "bronze", "items",
    _schema(
        ("item_key", StringType(), False),
        ("title", StringType(), True),
        ("genres", ArrayType(StringType()), False),
        ("year", IntegerType(), True),
        ("tags", ArrayType(StringType()), False),
        ("description", StringType(), True),
        ("text", StringType(), False),
        ("source", StringType(), False),
        ("ingest_ds", StringType(), False),
    ),
    key=("item_key",),
)

QUARANTINE_REJECTS = Table(
    "quarantine", "rejects",
    _schema(
        ("ds", StringType(), False),
        ("source", StringType(), False),
        ("raw_file", StringType(), False),
        ("raw", StringType(), True),
        ("reason", StringType(), False),
    ),
    partition_by=("ds",),
)

_ID_MAP_SCHEMA = _schema(("key", StringType(), False), ("idx", IntegerType(), False), ("first_ds", StringType(), False))
ID_MAP_USERS = Table("silver", "id_map_users", _ID_MAP_SCHEMA, key=("key",))
ID_MAP_ITEMS = Table("silver", "id_map_items", _ID_MAP_SCHEMA, key=("key",))

SILVER_INTERACTIONS = Table(
    "silver", "interactions",
    _schema(
        ("user_idx", IntegerType(), False),
        ("item_idx", IntegerType(), False),
        ("rating", DoubleType(), True),
        ("weight", DoubleType(), True),
        ("label", FloatType(), False),
        ("ts", LongType(), True),
        ("split", StringType(), False),
    ),
    key=("user_idx", "item_idx"),
)

TRAINING_EXAMPLES = Table(
    "features", "training_examples",
    _schema(
        ("user_idx", IntegerType(), False),
        ("item_idx", IntegerType(), False),
        ("label", FloatType(), False),
        ("rating", DoubleType(), True),  # for the multi-task rating head; null for implicit events
        ("recency", FloatType(), False),  # place in the user's train history: 0 oldest .. 1 newest
    ),
)

# All of a user's positives as of ds, with recency over their whole history: the serving model's examples.
SERVING_EXAMPLES = Table("features", "serving_examples", TRAINING_EXAMPLES.schema)

# The table versions that make up one night's snapshot, written last by the features job.
MANIFEST = Table(
    "features", "manifest",
    _schema(("ds", StringType(), False), ("table", StringType(), False), ("version", LongType(), False)),
    key=("ds", "table"),
)

GENRE_VOCABULARY = Table("features", "genre_vocabulary", _ID_MAP_SCHEMA, key=("key",))

ITEM_FEATURES = Table(
    "features", "item_features",
    _schema(
        ("item_idx", IntegerType(), False),
        ("item_key", StringType(), False),
        ("popularity", LongType(), False),
        ("rating_count", LongType(), False),
        ("mean_rating", DoubleType(), True),
        ("genres", ArrayType(StringType()), False),
        ("genre_vector", ArrayType(FloatType()), False),
        ("year", IntegerType(), True),
    ),
    key=("item_idx",),
)

USER_FEATURES = Table(
    "features", "user_features",
    _schema(
        ("user_idx", IntegerType(), False),
        ("user_key", StringType(), False),
        ("n_interactions", LongType(), False),
        ("n_positives", LongType(), False),
        ("mean_rating", DoubleType(), True),
        ("first_ts", LongType(), True),
        ("last_ts", LongType(), True),
        ("days_since_last", DoubleType(), True),
        ("genre_affinity", ArrayType(FloatType()), False),
    ),
    key=("user_idx",),
)

ITEM_TEXT_EMBEDDINGS = Table(
    "features", "item_text_embeddings",
    _schema(
        ("item_key", StringType(), False),
        ("text_hash", StringType(), False),
        ("encoder", StringType(), False),
        ("embedding", ArrayType(FloatType()), False),
        ("embedded_ds", StringType(), False),
    ),
    key=("item_key",),
)

USER_SEGMENTS = Table(
    "features", "user_segments",
    _schema(
        ("ds", StringType(), False),
        ("user_key", StringType(), False),
        ("user_idx", IntegerType(), False),
        ("segment", IntegerType(), False),
        ("distance", DoubleType(), False),
    ),
    partition_by=("ds",), key=("ds", "user_key"),
)

SEGMENT_PROFILES = Table(
    "features", "segment_profiles",
    _schema(
        ("ds", StringType(), False),
        ("segment", IntegerType(), False),
        ("size", LongType(), False),
        ("top_genres", ArrayType(StringType()), False),
        ("top_items", ArrayType(StringType()), False),
        ("titles", ArrayType(StringType()), False),
        ("mean_activity", DoubleType(), False),
    ),
    partition_by=("ds",), key=("ds", "segment"),
)

DATA_QUALITY = Table(
    "serving", "data_quality",
    _schema(
        ("ds", StringType(), False),
        ("stage", StringType(), False),
        ("metric", StringType(), False),
        ("value", DoubleType(), False),
    ),
    partition_by=("ds",), key=("ds", "stage", "metric"),
)

STAGING_RECOMMENDATIONS = Table(
    "staging", "recommendations",
    _schema(
        ("ds", StringType(), False),
        ("user_key", StringType(), False),
        ("rank", IntegerType(), False),
        ("item_key", StringType(), False),
        ("score", FloatType(), False),
        ("model_version", StringType(), False),
        ("reason", StringType(), False),
    ),
    # Read once, whole, by the publish gate: file statistics would only slow the write.
    properties=(("delta.dataSkippingNumIndexedCols", "0"),),
)

RECOMMENDATIONS = Table(
    "serving", "recommendations", STAGING_RECOMMENDATIONS.schema,
    partition_by=("ds",), key=("ds", "user_key", "rank"),
    # Lookups are by user: statistics on user_key alone let them skip files; the others cost write time.
    properties=(("delta.dataSkippingStatsColumns", "user_key"),),
)

METRICS = Table(
    "serving", "metrics",
    _schema(
        ("ds", StringType(), False),
        ("model_version", StringType(), False),
        ("model", StringType(), False),
        ("metric", StringType(), False),
        ("k", IntegerType(), False),
        ("value", DoubleType(), False),
    ),
    partition_by=("ds",), key=("ds", "model_version", "model", "metric", "k"),
)

ALL_TABLES = (
    BRONZE_INTERACTIONS, BRONZE_ITEMS, QUARANTINE_REJECTS, ID_MAP_USERS, ID_MAP_ITEMS,
    SILVER_INTERACTIONS, TRAINING_EXAMPLES, SERVING_EXAMPLES, MANIFEST, GENRE_VOCABULARY, ITEM_FEATURES,
    USER_FEATURES, ITEM_TEXT_EMBEDDINGS, USER_SEGMENTS, SEGMENT_PROFILES,
    DATA_QUALITY, STAGING_RECOMMENDATIONS, RECOMMENDATIONS, METRICS,
)


def conform(df: DataFrame, table: Table) -> DataFrame:
    """Select and cast ``df`` to the table's declared columns; fail naming any missing column."""
    missing = [f.name for f in table.schema.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"{table.qualified}: DataFrame lacks declared columns {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in table.schema.fields])


def exists(spark: SparkSession, cfg: Config, table: Table) -> bool:
    return DeltaTable.isDeltaTable(spark, table.path(cfg))


def read(spark: SparkSession, cfg: Config, table: Table, version: Optional[int] = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table.path(cfg))


def version(spark: SparkSession, cfg: Config, table: Table) -> int:
    """The latest committed Delta version of ``table``."""
    return DeltaTable.forPath(spark, table.path(cfg)).history(1).select("version").first()[0]


def _apply_properties(spark: SparkSession, table: Table, path: str) -> None:
    """Give ``table`` its declared Delta properties, which a DataFrame write cannot set: created empty
    with them when new, altered once when an older warehouse lacks them."""
    if not table.properties:
        return
    if not DeltaTable.isDeltaTable(spark, path):
        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(table.schema)
        if table.partition_by:
            builder = builder.partitionedBy(*table.partition_by)
        for key, value in table.properties:
            builder = builder.property(key, value)
        builder.execute()
        return
    current = DeltaTable.forPath(spark, path).detail().first()["properties"]
    missing = [(k, v) for k, v in table.properties if current.get(k) != v]
    if missing:
        assignments = ", ".join(f"'{k}' = '{v}'" for k, v in missing)
        spark.sql(f"ALTER TABLE delta.{quoted_name(path)} SET TBLPROPERTIES ({assignments})")


def _writer(df: DataFrame, cfg: Config, table: Table):
    _apply_properties(df.sparkSession, table, table.path(cfg))
    writer = conform(df, table).write.format("delta")
    if table.partition_by:
        writer = writer.partitionBy(*table.partition_by)
    return writer


def overwrite(df: DataFrame, cfg: Config, table: Table, tag: Optional[str] = None) -> None:
    """Replace the whole table in one atomic commit, schema included.

    The rows are conformed to the contract declared here, so a table written by an older lakerec
    (e.g. before a column was added) takes the current schema instead of failing the write. A
    ``tag`` is stored with the commit (Delta ``userMetadata``): :func:`tagged_version` finds it again.
    """
    def write() -> None:
        writer = _writer(df, cfg, table).mode("overwrite").option("overwriteSchema", "true")
        if tag is not None:
            writer = writer.option("userMetadata", tag)
        writer.save(table.path(cfg))

    retrying(table.qualified, write)
    faults.wrote(table.qualified)


def tagged_version(spark: SparkSession, cfg: Config, table: Table, tag: str) -> int:
    """The version this writer committed with ``tag``, even when another writer has committed since."""
    history = DeltaTable.forPath(spark, table.path(cfg)).history().where(F.col("userMetadata") == tag)
    row = history.select(F.max("version")).first()
    if row is None or row[0] is None:
        raise RuntimeError(f"{table.qualified}: no commit tagged {tag!r}")
    return int(row[0])


def sql_string(value: str) -> str:
    """``value`` as a quoted SQL string literal, so no value can widen the predicate it is placed in."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def quoted_name(name: str) -> str:
    """``name`` (a column, or a table path) as a backquoted SQL identifier, backquotes in it doubled."""
    return "`" + name.replace("`", "``") + "`"


def equals(**columns: str) -> str:
    """A ``replaceWhere`` predicate ``a = 'x' AND b = 'y'`` with every name and value escaped."""
    return " AND ".join(f"{quoted_name(name)} = {sql_string(value)}" for name, value in columns.items())


def replace_where(df: DataFrame, cfg: Config, table: Table, predicate: str) -> None:
    """Atomically replace the rows matching ``predicate`` (e.g. one ``ds``): reruns never duplicate."""
    retrying(table.qualified, lambda: _writer(df, cfg, table).mode("overwrite").option("replaceWhere", predicate)
             .save(table.path(cfg)))
    faults.wrote(table.qualified)


def append_numbered(spark: SparkSession, cfg: Config, table: Table,
                    new_rows: Callable[[Optional[DataFrame]], DataFrame]) -> int:
    """Append ``new_rows(current)``, rows numbered from what ``table`` holds (an id map), exclusively.

    ``current`` is the table as of one version (None before its first write). The append commits
    with Delta's idempotent-write transaction (``txnAppId``, ``txnVersion`` = that version + 1), so
    when another writer extended the table after that version, this write conflicts or is skipped,
    never committed beside it; the rows are then derived again from the newer version. Returns how
    many rows were appended.
    """
    app_id = f"lakerec:{table.qualified}"
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        current = version(spark, cfg, table) if exists(spark, cfg, table) else None
        rows = conform(new_rows(None if current is None else read(spark, cfg, table, current)), table).cache()
        try:
            count = rows.count()
            if not count and current is not None:
                return 0
            token = f"{app_id}:{uuid.uuid4()}"
            try:
                (_writer(rows, cfg, table).mode("append").option("txnAppId", app_id)
                 .option("txnVersion", 0 if current is None else current + 1)
                 .option("userMetadata", token).save(table.path(cfg)))
            except CONFLICTS as exc:
                log.warning("%s: a concurrent writer extended it (%s); renumbering", table.qualified, type(exc).__name__)
                continue
        finally:
            rows.unpersist()
        if _committed(spark, cfg, table, token):
            faults.wrote(table.qualified)
            return count
        log.warning("%s: another writer extended it since version %s; renumbering", table.qualified, current)
    raise RuntimeError(f"{table.qualified}: {CONFLICT_ATTEMPTS} attempts to extend it lost to concurrent writers; "
                       "is another lakerec run writing this warehouse?")


def _committed(spark: SparkSession, cfg: Config, table: Table, token: str) -> bool:
    """Whether a commit tagged ``token`` is among the table's last few (a skipped write left none)."""
    recent = DeltaTable.forPath(spark, table.path(cfg)).history(CONFLICT_ATTEMPTS * 4)
    return recent.where(F.col("userMetadata") == token).limit(1).count() > 0


def merge_insert(spark: SparkSession, df: DataFrame, cfg: Config, table: Table, update: bool = False) -> int:
    """MERGE ``df`` into ``table`` on its key: insert rows whose key is new; returns how many were inserted.

    A row already present keeps the earliest ``ingest_ds`` it arrived on (bronze tables) (a backfilled night's drop
    re-dates it, so that night sees it too); with ``update`` a later arrival also replaces its other
    columns (item metadata). Creates the table on first use. The count comes from this merge's own
    result, not the table history, which another writer may have moved on.
    """
    count = retrying(table.qualified, lambda: _merge(spark, df, cfg, table, update))
    faults.wrote(table.qualified)
    return count


def _merge(spark: SparkSession, df: DataFrame, cfg: Config, table: Table, update: bool) -> int:
    if not exists(spark, cfg, table):
        df = conform(df, table).cache()
        count = df.count()
        _writer(df, cfg, table).mode("append").save(table.path(cfg))
        df.unpersist()
        return count
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in table.key)
    merge = DeltaTable.forPath(spark, table.path(cfg)).alias("t").merge(conform(df, table).alias("s"), condition)
    if "ingest_ds" in table.schema.fieldNames():
        merge = merge.whenMatchedUpdate("s.ingest_ds < t.ingest_ds", {"ingest_ds": "s.ingest_ds"})
    if update:
        later = [f.name for f in table.schema.fields if f.name not in ("ingest_ds", *table.key)]
        changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in later)  # unchanged rows are not rewritten
        merge = merge.whenMatchedUpdate(changed, {f"`{c}`": f"s.`{c}`" for c in later})
    metrics = merge.whenNotMatchedInsertAll().execute().first()
    return int(metrics["num_inserted_rows"]) if metrics is not None else 0
