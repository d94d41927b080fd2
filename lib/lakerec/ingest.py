"""Ingest: raw interaction and item files -> bronze.interactions, bronze.items, quarantine.rejects.

A ``source.path`` with ``{ds}`` is a daily drop: each night reads its own folder. Every bronze row
records the earliest night it arrived on (``ingest_ds``), which is what later stages filter on.

Readers turn each source format into the same raw shape (every field still a string, plus the
raw text and file of the row); one validator assigns each row a reject reason or none. Every raw
row is either a bronze row or a quarantine row with its reason: nothing is dropped. Bronze writes
are MERGEs on the event key, so re-ingesting the same file adds nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import quality, tables
from lakerec.config import DS_FIELD, Config, InteractionMapping, ItemMapping, SourceConfig, resolve_path

log = logging.getLogger(__name__)

RAW_FIELDS = ("user_raw", "item_raw", "rating_raw", "weight_raw", "ts_raw")
EVENT_KEY = ("user_key", "item_key", "ts")
NO_GENRES = "(no genres listed)"
LATIN1 = "ISO-8859-1"
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


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


# ---------------------------------------------------------------- readers: format -> raw strings

def split_lines(lines: DataFrame, separator: str, n_fields: int) -> DataFrame:
    """Delimited text lines (no quoting) -> raw columns; a wrong field count leaves ``fields_ok`` false."""
    parts = F.split(F.col("value"), _regex_literal(separator), -1)
    return lines.select(
        F.col("value").alias("raw"), "raw_file",
        (F.size(parts) == n_fields).alias("fields_ok"),
        F.get(parts, 0).alias("user_raw"), F.get(parts, 1).alias("item_raw"),
        F.get(parts, 2).alias("rating_raw"), F.lit(None).cast("string").alias("weight_raw"),
        F.get(parts, 3).alias("ts_raw"),
    )


def _regex_literal(separator: str) -> str:
    return "".join("\\" + c if not c.isalnum() else c for c in separator)


def _text_lines(spark: SparkSession, path: str, header: Optional[str] = None) -> DataFrame:
    lines = spark.read.text(path).withColumn("raw_file", F.input_file_name())
    return lines.where(F.col("value") != header) if header else lines


def _read_table(spark: SparkSession, path: str, m: InteractionMapping | ItemMapping) -> DataFrame:
    """A generic file as all-string columns plus ``raw`` (the row as text) and ``fields_ok``."""
    if m.type == "csv":
        opts = {"sep": m.separator, "header": str(m.header).lower(), "encoding": m.encoding}
        columns = spark.read.options(**opts).csv(path).columns
        schema = ", ".join(f"`{c}` string" for c in columns) + ", _corrupt_record string"
        df = spark.read.options(**opts, mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt_record").schema(schema).csv(path)
        raw = F.coalesce(F.col("_corrupt_record"), F.concat_ws(m.separator, *[F.coalesce(F.col(f"`{c}`"), F.lit("")) for c in columns]))
        fields_ok = F.col("_corrupt_record").isNull()
    else:
        df = spark.read.parquet(path) if m.type == "parquet" else spark.read.json(path)
        raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
        fields_ok = F.lit(True)
    return df.withColumn("raw", raw).withColumn("fields_ok", fields_ok).withColumn("raw_file", F.input_file_name())


def _optional(name: Optional[str]) -> Column:
    return F.col(f"`{name}`").cast("string") if name else F.lit(None).cast("string")


def drop_root(src: SourceConfig, ds: str) -> Path:
    """The folder to read for ``ds``: ``source.path`` with ``{ds}`` replaced (a daily drop), or as is."""
    return Path(resolve_path(src.path.replace(DS_FIELD, ds)))


def read_raw_interactions(spark: SparkSession, src: SourceConfig, ds: str) -> DataFrame:
    """The source's interactions for ``ds`` as raw strings: raw, raw_file, fields_ok, *RAW_FIELDS."""
    root = drop_root(src, ds)
    if src.format == "movielens_latest":
        return split_lines(_text_lines(spark, str(root / "ratings.csv"), "userId,movieId,rating,timestamp"), ",", 4)
    if src.format == "movielens_100k":
        return split_lines(_text_lines(spark, str(root / "u.data")), "\t", 4)
    if src.format == "movielens_1m":
        return split_lines(_text_lines(spark, str(root / "ratings.dat")), "::", 4)
    m = src.interactions
    df = _read_table(spark, str(root / m.file.replace(DS_FIELD, ds)), m)
    missing = [c for c in (m.user, m.item, m.rating, m.weight, m.timestamp) if c and c not in df.columns]
    if missing:
        raise ValueError(f"source.interactions: columns {missing} not in {root / m.file} (found {df.columns})")
    return df.select(
        "raw", "raw_file", "fields_ok",
        _optional(m.user).alias("user_raw"), _optional(m.item).alias("item_raw"),
        _optional(m.rating).alias("rating_raw"), _optional(m.weight).alias("weight_raw"),
        _optional(m.timestamp).alias("ts_raw"),
    )


def validate_interactions(
    raw: DataFrame, rating_min: float, rating_max: float, has_rating: bool, has_ts: bool, ts_format: Optional[str] = None
) -> DataFrame:
    """Raw strings -> typed columns plus ``reason`` (null for a valid row, else the first problem)."""
    user, item = _blank_to_null(F.col("user_raw")), _blank_to_null(F.col("item_raw"))
    rating_raw, weight_raw, ts_raw = (_blank_to_null(F.col(c)) for c in ("rating_raw", "weight_raw", "ts_raw"))
    rating, weight = rating_raw.try_cast("double"), weight_raw.try_cast("double")
    if ts_format:
        ts = F.unix_timestamp(F.try_to_timestamp(ts_raw, F.lit(ts_format)))
    else:
        ts = ts_raw.try_cast("long")
    reason = (
        F.when(~F.col("fields_ok"), F.lit("wrong_field_count"))
        .when(user.isNull(), F.lit("missing_user_key"))
        .when(item.isNull(), F.lit("missing_item_key"))
    )
    if has_rating:
        reason = reason.when(rating_raw.isNull() | rating.isNull() | F.isnan(rating), F.lit("unparseable_rating")).when(
            (rating < rating_min) | (rating > rating_max), F.lit("rating_out_of_range")
        )
    reason = reason.when(weight_raw.isNotNull() & (weight.isNull() | F.isnan(weight) | (weight < 0)), F.lit("bad_weight"))
    if has_ts:
        reason = reason.when(ts_raw.isNull() | ts.isNull() | (ts < 0), F.lit("bad_timestamp"))
    return raw.select(
        "raw", "raw_file",
        user.alias("user_key"), item.alias("item_key"), rating.alias("rating"), weight.alias("weight"),
        ts.alias("ts"), reason.alias("reason"),
    )


def flag_batch_duplicates(parsed: DataFrame, key: tuple[str, ...]) -> DataFrame:
    """Mark every repeat of a key among one batch's valid rows as ``duplicate_in_batch`` (the first
    one is kept): a rejected row with the same key must not displace the valid one."""
    valid = F.col("reason").isNull()
    w = Window.partitionBy(valid, *key).orderBy("raw_file", "raw")
    return parsed.withColumn("reason", F.when(valid & (F.row_number().over(w) > 1), F.lit("duplicate_in_batch"))
                             .otherwise(F.col("reason")))


# ---------------------------------------------------------------- items

def _genres_from(col: Column, separator: str) -> Column:
    return F.when(col.isNull() | (F.trim(col) == "") | (col == NO_GENRES), F.array().cast("array<string>")).otherwise(
        F.transform(F.split(col, _regex_literal(separator)), F.trim)
    )


def _year(title: Column) -> Column:
    year = F.regexp_extract(title, r"\((\d{4})\)\s*$", 1)
    return F.when(year != "", year.cast("int"))


def _items_frame(df: DataFrame, item: Column, title: Column, genres: Column, tags: Column, description: Column) -> DataFrame:
    item_key = _blank_to_null(item)
    return df.select(
        "raw", "raw_file",
        item_key.alias("item_key"),
        F.trim(title).alias("title"),
        genres.alias("genres"),
        _year(title).alias("year"),
        F.coalesce(tags, F.array().cast("array<string>")).alias("tags"),
        description.alias("description"),
        F.when(item_key.isNull(), F.lit("missing_item_key")).alias("reason"),
    )


def read_items(spark: SparkSession, src: SourceConfig, ds: str) -> Optional[DataFrame]:
    """Item metadata for ``ds`` as bronze item columns plus raw/raw_file/reason; None when the source has none."""
    root = drop_root(src, ds)
    no_tags = F.lit(None).cast("array<string>")
    no_text = F.lit(None).cast("string")
    if src.format == "movielens_latest":
        movies = spark.read.csv(str(root / "movies.csv"), header=True, schema="movieId string, title string, genres string")
        movies = movies.withColumn("raw", F.concat_ws(",", "movieId", "title", "genres")).withColumn("raw_file", F.input_file_name())
        tags = spark.read.csv(str(root / "tags.csv"), header=True, schema="userId string, movieId string, tag string, timestamp string")
        tag_sets = (
            tags.where(F.col("movieId").isNotNull() & F.col("tag").isNotNull())
            .groupBy(F.trim("movieId").alias("movieId"))
            .agg(F.array_sort(F.collect_set(F.lower(F.trim("tag")))).alias("tag_set"))
        )
        movies = movies.join(tag_sets, "movieId", "left")
        return _items_frame(movies, F.col("movieId"), F.col("title"), _genres_from(F.col("genres"), "|"), F.col("tag_set"), no_text)
    if src.format == "movielens_100k":
        names = ["movieId", "title", "release", "video_release", "url", *[f"g{i}" for i in range(len(ML100K_GENRES))]]
        schema = ", ".join(f"{n} string" for n in names)
        df = spark.read.csv(str(root / "u.item"), sep="|", encoding=LATIN1, schema=schema)
        df = df.withColumn("raw", F.concat_ws("|", *[F.coalesce(F.col(n), F.lit("")) for n in names])).withColumn("raw_file", F.input_file_name())
        flags = F.array(*[F.when(F.col(f"g{i}") == "1", F.lit(g)) for i, g in enumerate(ML100K_GENRES)])
        return _items_frame(df, F.col("movieId"), F.col("title"), F.filter(flags, lambda g: g.isNotNull()), no_tags, no_text)
    if src.format == "movielens_1m":
        df = spark.read.csv(str(root / "movies.dat"), sep="::", encoding=LATIN1, schema="movieId string, title string, genres string")
        df = df.withColumn("raw", F.concat_ws("::", "movieId", "title", "genres")).withColumn("raw_file", F.input_file_name())
        return _items_frame(df, F.col("movieId"), F.col("title"), _genres_from(F.col("genres"), "|"), no_tags, no_text)
    m = src.items
    if m is None or not m.file:
        return None
    df = _read_table(spark, str(root / m.file.replace(DS_FIELD, ds)), m)
    genres = _genres_from(F.col(f"`{m.genres}`"), m.genre_separator) if m.genres else F.array().cast("array<string>")
    tags = F.transform(F.split(F.col(f"`{m.tags}`"), _regex_literal(m.tag_separator)), F.trim) if m.tags else no_tags
    return _items_frame(df, _optional(m.item), _optional(m.title), genres, tags, _optional(m.description))


def item_text(title: Column, genres: Column, tags: Column, description: Column) -> Column:
    """One text per item from its metadata: what the sentence encoder embeds."""
    return F.concat_ws(
        " | ", F.coalesce(title, F.lit("")), F.array_join(genres, ", "), F.array_join(tags, ", "), F.coalesce(description, F.lit(""))
    )


# ---------------------------------------------------------------- the job

def _reject_rows(df: DataFrame, ds: str, source: str) -> DataFrame:
    return df.where(F.col("reason").isNotNull()).select(
        F.lit(ds).alias("ds"), F.lit(source).alias("source"), "raw_file", "raw", "reason"
    )


def run(spark: SparkSession, cfg: Config, ds: str) -> IngestResult:
    """Ingest the configured source for run date ``ds`` (that night's drop when ``source.path`` has ``{ds}``)."""
    src = cfg.source
    if not drop_root(src, ds).exists():
        raise FileNotFoundError(f"config key 'source.path': no drop for ds={ds} at {drop_root(src, ds)}; "
                                "nothing was written")
    generic = src.interactions if src.format == "generic" else None
    has_rating = generic is None or generic.rating is not None
    has_ts = generic is None or generic.timestamp is not None
    parsed = validate_interactions(
        read_raw_interactions(spark, src, ds), src.rating_min, src.rating_max, has_rating, has_ts,
        generic.timestamp_format if generic else None,
    )
    parsed = flag_batch_duplicates(parsed, EVENT_KEY).cache()
    rejects = _reject_rows(parsed, ds, src.name)

    items = read_items(spark, src, ds)
    if items is not None:
        items = flag_batch_duplicates(items, ("item_key",)).cache()
        rejects = rejects.unionByName(_reject_rows(items, ds, src.name))

    result = IngestResult(rows_read=parsed.count())
    result.rejects_by_reason = {r["reason"]: r["count"] for r in rejects.groupBy("reason").count().collect()}
    # Quarantine first: a later failure must not lose the reasons already found. Replacing this
    # (ds, source) slice keeps reruns from duplicating rejects.
    tables.replace_where(rejects, cfg, tables.QUARANTINE_REJECTS, f"ds = '{ds}' AND source = '{src.name}'")

    good = parsed.where(F.col("reason").isNull()).select(
        F.lit(src.name).alias("source"), "user_key", "item_key", "rating", "weight", "ts",
        F.lit(ds).alias("ingest_ds"), "raw_file",
    )
    result.interactions_inserted = tables.merge_insert(spark, good, cfg, tables.BRONZE_INTERACTIONS)
    if items is not None:
        good_items = items.where(F.col("reason").isNull()).select(
            "item_key", "title", "genres", "year", "tags", "description",
            item_text(F.col("title"), F.col("genres"), F.col("tags"), F.col("description")).alias("text"),
            F.lit(src.name).alias("source"), F.lit(ds).alias("ingest_ds"),
        )
        result.items_inserted = tables.merge_insert(spark, good_items, cfg, tables.BRONZE_ITEMS, update=True)
        items.unpersist()
    parsed.unpersist()
    quality.record(spark, cfg, ds, "ingest", {
        "rows_read": result.rows_read,
        "interactions_inserted": result.interactions_inserted,
        "items_inserted": result.items_inserted,
        "rejects": result.rejects,
        **{f"rejects_{reason}": count for reason, count in result.rejects_by_reason.items()},
    })
    log.info(
        "ingest %s: %d rows read, %d new interactions, %d new items, %d rejects %s",
        ds, result.rows_read, result.interactions_inserted, result.items_inserted, result.rejects, result.rejects_by_reason,
    )
    return result
