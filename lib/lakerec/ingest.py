"""Ingest: raw MovieLens-style files -> bronze.interactions, bronze.items, quarantine.rejects.

Every raw line is either a bronze row or a quarantine row with a reason: nothing is dropped.
Bronze writes are MERGEs on the event key, so re-ingesting the same file adds nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import tables
from lakerec.config import Config, resolve_path

log = logging.getLogger(__name__)

RATINGS_HEADER = "userId,movieId,rating,timestamp"
MOVIES_HEADER = "movieId,title,genres"
NO_GENRES = "(no genres listed)"


@dataclass
class IngestResult:
    rows_read: int = 0
    interactions_inserted: int = 0
    items_inserted: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rejects(self) -> int:
        return sum(self.rejects_by_reason.values())


def _blank_to_null(col: Column) -> Column:
    trimmed = F.trim(col)
    return F.when(trimmed == "", None).otherwise(trimmed)


def parse_ratings(lines: DataFrame, rating_min: float, rating_max: float) -> DataFrame:
    """Parse ``value`` lines of ``userId,movieId,rating,timestamp`` into typed columns plus ``reason``.

    ``reason`` is null for a valid row, otherwise the first problem found. Pure DataFrame -> DataFrame.
    """
    parts = F.split(F.col("value"), ",", -1)
    user = _blank_to_null(F.get(parts, 0))
    item = _blank_to_null(F.get(parts, 1))
    rating_raw = _blank_to_null(F.get(parts, 2))
    ts_raw = _blank_to_null(F.get(parts, 3))
    rating = rating_raw.try_cast("double")
    ts = ts_raw.try_cast("long")
    reason = (
        F.when(F.size(parts) != 4, F.lit("wrong_field_count"))
        .when(user.isNull(), F.lit("missing_user_key"))
        .when(item.isNull(), F.lit("missing_item_key"))
        .when(rating_raw.isNull() | rating.isNull() | F.isnan(rating), F.lit("unparseable_rating"))
        .when((rating < rating_min) | (rating > rating_max), F.lit("rating_out_of_range"))
        .when(ts_raw.isNull() | ts.isNull() | (ts < 0), F.lit("bad_timestamp"))
    )
    return lines.select(
        F.col("value").alias("raw"),
        F.col("raw_file"),
        user.alias("user_key"),
        item.alias("item_key"),
        rating.alias("rating"),
        ts.alias("ts"),
        reason.alias("reason"),
    )


def flag_batch_duplicates(parsed: DataFrame, key: tuple[str, ...]) -> DataFrame:
    """Mark every repeat of an event key within one batch as ``duplicate_in_batch`` (first one kept)."""
    w = Window.partitionBy(*key).orderBy("raw_file", "raw")
    valid = F.col("reason").isNull()
    rn = F.when(valid, F.row_number().over(w))
    return parsed.withColumn("reason", F.when(valid & (rn > 1), F.lit("duplicate_in_batch")).otherwise(F.col("reason")))


def _read_lines(spark: SparkSession, path: str, header: str) -> DataFrame:
    return (
        spark.read.text(path)
        .withColumn("raw_file", F.input_file_name())
        .where(F.col("value") != header)
    )


def parse_items(movies: DataFrame, tags: DataFrame) -> DataFrame:
    """movies.csv rows (+ tags) -> bronze item columns plus ``reason`` for rows without an id."""
    tag_sets = (
        tags.where(F.col("movieId").isNotNull() & F.col("tag").isNotNull())
        .groupBy(F.trim("movieId").alias("item_key"))
        .agg(F.array_sort(F.collect_set(F.lower(F.trim("tag")))).alias("tags"))
    )
    item_key = _blank_to_null(F.col("movieId"))
    genres = F.when(
        F.col("genres").isNull() | (F.col("genres") == NO_GENRES), F.array().cast("array<string>")
    ).otherwise(F.split("genres", r"\|"))
    year = F.regexp_extract("title", r"\((\d{4})\)\s*$", 1)
    items = movies.select(
        F.concat_ws(",", "movieId", "title", "genres").alias("raw"),
        F.col("raw_file"),
        item_key.alias("item_key"),
        F.trim("title").alias("title"),
        genres.alias("genres"),
        F.when(year != "", year.cast("int")).alias("year"),
        F.when(item_key.isNull(), F.lit("missing_item_key")).alias("reason"),
    )
    items = items.join(tag_sets, "item_key", "left").withColumn(
        "tags", F.coalesce("tags", F.array().cast("array<string>"))
    )
    text = F.concat_ws(
        " | ", F.coalesce("title", F.lit("")), F.array_join("genres", ", "), F.array_join("tags", ", ")
    )
    return items.withColumn("text", text)


def _reject_rows(df: DataFrame, ds: str, source: str) -> DataFrame:
    return df.where(F.col("reason").isNotNull()).select(
        F.lit(ds).alias("ds"), F.lit(source).alias("source"), "raw_file", "raw", "reason"
    )


def run(spark: SparkSession, cfg: Config, ds: str) -> IngestResult:
    """Ingest the configured source for run date ``ds``."""
    src = cfg.source
    root = resolve_path(src.path)
    ratings_path = str(Path(root) / "ratings.csv")
    movies_path = str(Path(root) / "movies.csv")
    tags_path = str(Path(root) / "tags.csv")

    parsed = parse_ratings(_read_lines(spark, ratings_path, RATINGS_HEADER), src.rating_min, src.rating_max)
    parsed = flag_batch_duplicates(parsed, ("user_key", "item_key", "ts")).cache()

    movies = spark.read.csv(movies_path, header=True, schema="movieId string, title string, genres string")
    movies = movies.withColumn("raw_file", F.input_file_name())
    tags = spark.read.csv(tags_path, header=True, schema="userId string, movieId string, tag string, timestamp string")
    items = flag_batch_duplicates(parse_items(movies, tags), ("item_key",)).cache()

    rejects = _reject_rows(parsed, ds, src.name).unionByName(_reject_rows(items, ds, src.name))
    result = IngestResult(rows_read=parsed.count())
    result.rejects_by_reason = {r["reason"]: r["count"] for r in rejects.groupBy("reason").count().collect()}

    good = parsed.where(F.col("reason").isNull()).select(
        F.lit(src.name).alias("source"), "user_key", "item_key", "rating", "ts",
        F.lit(ds).alias("ingest_ds"), "raw_file",
    )
    good_items = items.where(F.col("reason").isNull()).select(
        "item_key", "title", "genres", "year", "tags", "text",
        F.lit(src.name).alias("source"), F.lit(ds).alias("ingest_ds"),
    )
    # Quarantine first: a later failure must not lose the reasons already found. Replacing this
    # (ds, source) slice keeps reruns from duplicating rejects.
    tables.replace_where(rejects, cfg, tables.QUARANTINE_REJECTS, f"ds = '{ds}' AND source = '{src.name}'")
    result.interactions_inserted = tables.merge_insert(spark, good, cfg, tables.BRONZE_INTERACTIONS)
    result.items_inserted = tables.merge_insert(spark, good_items, cfg, tables.BRONZE_ITEMS, update=True)
    parsed.unpersist()
    items.unpersist()
    log.info(
        "ingest %s: %d rows read, %d new interactions, %d new items, %d rejects %s",
        ds, result.rows_read, result.interactions_inserted, result.items_inserted, result.rejects, result.rejects_by_reason,
    )
    return result
