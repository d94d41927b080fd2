"""Ingest: raw interaction and item files -> bronze.interactions, bronze.items, quarantine.rejects.

A ``source.path`` with ``{ds}`` is a daily drop: each night reads its own folder. Every bronze row
records the earliest night it arrived on (``ingest_ds``), which is what later stages filter on.

Readers turn each source format into the same raw shape (every field still a string, plus the
raw text and file of the row); one validator assigns each row a reject reason or none. Every raw
row is a new bronze row, a row bronze already holds, or a quarantine row with its reason: nothing
is dropped, and every run checks that these add up to the rows read. Bronze writes are MERGEs on
the event key, so re-ingesting the same file adds nothing. A drop that is missing, empty or mostly
rejects stops the night with :class:`DropRejected` before bronze is written (its rejects are kept).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import faults, quality, tables
from lakerec.config import DS_FIELD, Config, InteractionMapping, ItemMapping, SourceConfig, resolve_path
from lakerec.snapshot import end_of_day

log = logging.getLogger(__name__)

RAW_FIELDS = ("user_raw", "item_raw", "rating_raw", "weight_raw", "ts_raw")
EVENT_KEY = ("user_key", "item_key", "ts")
NO_GENRES = "(no genres listed)"
LATIN1 = "ISO-8859-1"
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
PRESET_FILES = {"movielens_latest": ("ratings.csv", "movies.csv", "tags.csv"), "movielens_100k": ("u.data", "u.item"),
                "movielens_1m": ("ratings.dat", "movies.dat")}
COMPRESSED = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst")
CORRUPT = "_corrupt_record"
# An epoch this large is no time in seconds (year 5138) but is one in milliseconds (from 1973 on).
MS_EPOCH_FLOOR = 100_000_000_000
TRUNCATED = "...[truncated]"


class DropRejected(RuntimeError):
    """The night's input must not reach bronze (missing, empty, mostly rejects): the night stops here."""


@dataclass
class IngestResult:
    rows_read: int = 0
    interactions_inserted: int = 0
    already_present: int = 0
    redelivered_changed: int = 0
    interactions_quarantined: int = 0
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
    """Delimited text lines (no quoting) -> raw columns; a wrong field count sets ``shape_error``."""
    parts = F.split(F.col("value"), _regex_literal(separator), -1)
    return lines.select(
        F.col("value").alias("raw"), "raw_file",
        F.when(F.size(parts) != n_fields, F.lit("wrong_field_count")).alias("shape_error"),
        F.get(parts, 0).alias("user_raw"), F.get(parts, 1).alias("item_raw"),
        F.get(parts, 2).alias("rating_raw"), F.lit(None).cast("string").alias("weight_raw"),
        F.get(parts, 3).alias("ts_raw"),
    )


def _regex_literal(separator: str) -> str:
    return "".join("\\" + c if not c.isalnum() else c for c in separator)


def _text_lines(spark: SparkSession, path: str, header: Optional[str] = None) -> DataFrame:
    lines = spark.read.text(path).withColumn("raw_file", F.input_file_name())
    return lines.where(F.col("value") != header) if header else lines


def _data_files(path: Path) -> list[Path]:
    """The files Spark reads at ``path``: the file itself, or the visible files below a folder."""
    if path.is_file():
        return [path]
    return [f for f in sorted(path.rglob("*"))
            if f.is_file() and not any(p.startswith(("_", ".")) for p in f.relative_to(path).parts)]


def matching_paths(root: Path, pattern: str, key: str) -> list[Path]:
    """What ``pattern`` (a file, folder or glob under ``root``) names; DropRejected naming ``key`` when no file."""
    paths = sorted(root.glob(pattern))
    if not any(_data_files(p) for p in paths):
        raise DropRejected(f"config key '{key}': {pattern!r} matches no file under {root}; nothing was written")
    return paths


def _by_header(files: list[Path]) -> list[list[str]]:
    """``files`` grouped by their first line (a compressed file alone): each group is read with its own header."""
    groups: dict[object, list[str]] = {}
    for f in files:
        if f.suffix in COMPRESSED:
            key: object = f
        else:
            with f.open("rb") as fh:
                key = fh.readline(1 << 16)
        groups.setdefault(key, []).append(str(f))
    return list(groups.values())


def _project(df: DataFrame, raw: Column, shape_error: Column, wanted: dict[str, Optional[str]], where: str) -> DataFrame:
    """``df`` as raw, raw_file, shape_error and one string column per ``wanted`` (alias -> source column)."""
    missing = [c for c in wanted.values() if c and c not in df.columns]
    if missing:
        raise ValueError(f"{where}: columns {missing} not in the file (found {df.columns})")
    return df.select(
        raw.alias("raw"), F.input_file_name().alias("raw_file"), shape_error.alias("shape_error"),
        *[(F.col(tables.quoted_name(c)).cast("string") if c else F.lit(None).cast("string")).alias(a) for a, c in wanted.items()],
    )


def _read_csv(spark: SparkSession, files: list[str], m: InteractionMapping | ItemMapping,
              wanted: dict[str, Optional[str]], key: str) -> DataFrame:
    """CSV files that share one header (or have none), by that header's column names."""
    opts = {"sep": m.separator, "header": str(m.header).lower(), "encoding": m.encoding}
    columns = spark.read.options(**opts).csv(files[0]).columns
    schema = ", ".join(f"{tables.quoted_name(c)} string" for c in columns) + f", {CORRUPT} string"
    df = spark.read.options(**opts, mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT).schema(schema).csv(files)
    raw = F.coalesce(F.col(CORRUPT), F.concat_ws(m.separator, *[F.coalesce(F.col(tables.quoted_name(c)), F.lit("")) for c in columns]))
    return _project(df, raw, F.when(F.col(CORRUPT).isNotNull(), F.lit("wrong_field_count")), wanted, f"{key} {files[0]}")


def _read_table(spark: SparkSession, paths: list[Path], m: InteractionMapping | ItemMapping,
                wanted: dict[str, Optional[str]], key: str) -> DataFrame:
    """A generic source's files as raw strings; CSV files with a header are read in groups of equal headers."""
    if m.type == "csv":
        files = [f for p in paths for f in _data_files(p) if f.stat().st_size]  # an empty file has no header, no rows
        if not files:
            raise DropRejected(f"config key '{key}': every file it names is empty ({paths}); nothing was written")
        groups = _by_header(files) if m.header else [[str(f) for f in files]]
        return functools.reduce(DataFrame.unionByName, [_read_csv(spark, group, m, wanted, key) for group in groups])
    df = spark.read.parquet(*map(str, paths)) if m.type == "parquet" else spark.read.json([str(p) for p in paths])
    columns = [c for c in df.columns if c != CORRUPT]
    raw = F.to_json(F.struct(*[F.col(tables.quoted_name(c)) for c in columns]))
    if CORRUPT not in df.columns:
        return _project(df, raw, F.lit(None).cast("string"), wanted, key)
    return _project(df, F.coalesce(F.col(CORRUPT), raw), F.when(F.col(CORRUPT).isNotNull(), F.lit("malformed_record")),
                    wanted, key)


def drop_root(src: SourceConfig, ds: str) -> Path:
    """The folder to read for ``ds``: ``source.path`` with ``{ds}`` replaced (a daily drop), or as is."""
    return Path(resolve_path(src.path.replace(DS_FIELD, ds)))


def read_raw_interactions(spark: SparkSession, src: SourceConfig, ds: str) -> DataFrame:
    """The source's interactions for ``ds`` as raw strings: raw, raw_file, shape_error, *RAW_FIELDS."""
    root = drop_root(src, ds)
    if src.format == "movielens_latest":
        return split_lines(_text_lines(spark, str(root / "ratings.csv"), "userId,movieId,rating,timestamp"), ",", 4)
    if src.format == "movielens_100k":
        return split_lines(_text_lines(spark, str(root / "u.data")), "\t", 4)
    if src.format == "movielens_1m":
        return split_lines(_text_lines(spark, str(root / "ratings.dat")), "::", 4)
    m = src.interactions
    wanted = dict(zip(RAW_FIELDS, (m.user, m.item, m.rating, m.weight, m.timestamp)))
    key = "source.interactions.file"
    return _read_table(spark, matching_paths(root, m.file.replace(DS_FIELD, ds), key), m, wanted, key)


def _bad_encoding(raw: Column) -> Column:
    """Bytes invalid in UTF-8 (text reader), or the U+FFFD a decoder put in their place (csv, json readers)."""
    return ~F.is_valid_utf8(raw) | raw.contains("\ufffd")


def _too_long(limit: int, *fields: Column) -> Column:
    return F.greatest(*[F.coalesce(F.length(f), F.lit(0)) for f in fields]) > limit


def _not_finite(x: Column) -> Column:
    return F.isnan(x) | (F.abs(x) == float("inf"))


def validate_interactions(raw: DataFrame, src: SourceConfig, ds: str) -> DataFrame:
    """Raw strings -> typed columns plus ``reason`` (null for a valid row, else the first problem)."""
    generic = src.interactions if src.format == "generic" else None
    ts_format, end_ts = generic.timestamp_format if generic else None, end_of_day(ds)
    user, item = _blank_to_null(F.col("user_raw")), _blank_to_null(F.col("item_raw"))
    weight_raw, ts_raw = _blank_to_null(F.col("weight_raw")), _blank_to_null(F.col("ts_raw"))
    rating, weight = _blank_to_null(F.col("rating_raw")).try_cast("double"), weight_raw.try_cast("double")
    ts = F.unix_timestamp(F.try_to_timestamp(ts_raw, F.lit(ts_format))) if ts_format else ts_raw.try_cast("long")
    reason = (
        F.when(_bad_encoding(F.col("raw")), F.lit("bad_encoding"))
        .when(F.col("shape_error").isNotNull(), F.col("shape_error"))
        .when(_too_long(src.max_field_chars, *[F.col(c) for c in RAW_FIELDS]), F.lit("field_too_long"))
        .when(user.isNull(), F.lit("missing_user_key"))
        .when(item.isNull(), F.lit("missing_item_key"))
    )
    if generic is None or generic.rating:
        reason = (reason.when(rating.isNull(), F.lit("unparseable_rating"))
                  .when(_not_finite(rating), F.lit("non_finite_number"))
                  .when((rating < src.rating_min) | (rating > src.rating_max), F.lit("rating_out_of_range")))
    if generic is not None and generic.weight:  # a blank mapped weight is no evidence of an interaction's strength
        reason = reason.when(weight_raw.isNull(), F.lit("missing_weight"))
    reason = (reason.when(weight_raw.isNotNull() & weight.isNull(), F.lit("bad_weight"))
              .when(_not_finite(weight), F.lit("non_finite_number"))
              .when(weight < 0, F.lit("bad_weight")))
    if generic is None or generic.timestamp:
        reason = (reason.when(ts.isNull() | (ts < 0), F.lit("bad_timestamp"))
                  .when((ts >= MS_EPOCH_FLOOR) & (ts < end_ts * 1000), F.lit("timestamp_in_milliseconds"))
                  .when(ts >= end_ts, F.lit("future_timestamp")))
    return raw.select(
        "raw", "raw_file",
        user.alias("user_key"), item.alias("item_key"), rating.alias("rating"), weight.alias("weight"),
        ts.alias("ts"), reason.alias("reason"),
    )


def flag_batch_duplicates(parsed: DataFrame, key: tuple[str, ...]) -> DataFrame:
    """Mark every repeat of a key among one batch's valid rows (the first by file and raw text is kept):
    ``duplicate_row`` when its raw text repeats the kept row's, else ``duplicate_in_batch``. A rejected
    row with the same key must not displace the valid one."""
    valid = F.col("reason").isNull()
    w = Window.partitionBy(valid, *key).orderBy("raw_file", "raw")
    repeat = valid & (F.row_number().over(w) > 1)
    return parsed.withColumn("reason", F.when(repeat & (F.col("raw") == F.first("raw").over(w)), F.lit("duplicate_row"))
                             .when(repeat, F.lit("duplicate_in_batch")).otherwise(F.col("reason")))


# ---------------------------------------------------------------- items

def _genres_from(col: Column, separator: str) -> Column:
    return F.when(col.isNull() | (F.trim(col) == "") | (col == NO_GENRES), F.array().cast("array<string>")).otherwise(
        F.transform(F.split(col, _regex_literal(separator)), F.trim)
    )


def _year(title: Column) -> Column:
    year = F.regexp_extract(title, r"\((\d{4})\)\s*$", 1)
    return F.when(year != "", year.cast("int"))


def _items_frame(df: DataFrame, item: Column, title: Column, genres: Column, tags: Column, description: Column,
                 max_field_chars: int) -> DataFrame:
    item_key = _blank_to_null(item)
    shape_error = F.col("shape_error") if "shape_error" in df.columns else F.lit(None).cast("string")
    reason = (  # a description is free text: no length limit
        F.when(_bad_encoding(F.col("raw")), F.lit("bad_encoding"))
        .when(shape_error.isNotNull(), shape_error)
        .when(_too_long(max_field_chars, item, title), F.lit("field_too_long"))
        .when(item_key.isNull(), F.lit("missing_item_key"))
    )
    return df.select(
        "raw", "raw_file",
        item_key.alias("item_key"),
        F.trim(title).alias("title"),
        genres.alias("genres"),
        _year(title).alias("year"),
        F.coalesce(tags, F.array().cast("array<string>")).alias("tags"),
        description.alias("description"),
        reason.alias("reason"),
    )


def read_items(spark: SparkSession, src: SourceConfig, ds: str) -> Optional[DataFrame]:
    """Item metadata for ``ds`` as bronze item columns plus raw/raw_file/reason; None when the source has none."""
    root, limit = drop_root(src, ds), src.max_field_chars
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
        return _items_frame(movies, F.col("movieId"), F.col("title"), _genres_from(F.col("genres"), "|"), F.col("tag_set"),
                            no_text, limit)
    if src.format == "movielens_100k":
        names = ["movieId", "title", "release", "video_release", "url", *[f"g{i}" for i in range(len(ML100K_GENRES))]]
        schema = ", ".join(f"{n} string" for n in names)
        df = spark.read.csv(str(root / "u.item"), sep="|", encoding=LATIN1, schema=schema)
        df = df.withColumn("raw", F.concat_ws("|", *[F.coalesce(F.col(n), F.lit("")) for n in names])).withColumn("raw_file", F.input_file_name())
        flags = F.array(*[F.when(F.col(f"g{i}") == "1", F.lit(g)) for i, g in enumerate(ML100K_GENRES)])
        return _items_frame(df, F.col("movieId"), F.col("title"), F.filter(flags, lambda g: g.isNotNull()), no_tags, no_text,
                            limit)
    if src.format == "movielens_1m":
        df = spark.read.csv(str(root / "movies.dat"), sep="::", encoding=LATIN1, schema="movieId string, title string, genres string")
        df = df.withColumn("raw", F.concat_ws("::", "movieId", "title", "genres")).withColumn("raw_file", F.input_file_name())
        return _items_frame(df, F.col("movieId"), F.col("title"), _genres_from(F.col("genres"), "|"), no_tags, no_text, limit)
    m = src.items
    if m is None or not m.file:
        return None
    wanted = {"item": m.item, "title": m.title, "genres": m.genres, "tags": m.tags, "description": m.description}
    key = "source.items.file"
    df = _read_table(spark, matching_paths(root, m.file.replace(DS_FIELD, ds), key), m, wanted, key)
    tags = F.transform(F.split(F.col("tags"), _regex_literal(m.tag_separator)), F.trim)
    return _items_frame(df, F.col("item"), F.col("title"), _genres_from(F.col("genres"), m.genre_separator), tags,
                        F.col("description"), limit)


def item_text(title: Column, genres: Column, tags: Column, description: Column) -> Column:
    """One text per item from its metadata: what the sentence encoder embeds."""
    return F.concat_ws(
        " | ", F.coalesce(title, F.lit("")), F.array_join(genres, ", "), F.array_join(tags, ", "), F.coalesce(description, F.lit(""))
    )


# ---------------------------------------------------------------- the job

def _check_drop(src: SourceConfig, ds: str) -> None:
    """Fail before anything is read when the night's folder or a preset's file is missing."""
    root = drop_root(src, ds)
    if not root.exists():
        raise DropRejected(f"config key 'source.path': no drop for ds={ds} at {root}; nothing was written")
    missing = [name for name in PRESET_FILES.get(src.format, ()) if not (root / name).is_file()]
    if missing:
        raise DropRejected(f"config key 'source.path': {src.format} drop for ds={ds} at {root} lacks {missing}; "
                           "nothing was written")


def _reject_rows(df: DataFrame, ds: str, source: str, max_chars: int) -> DataFrame:
    """The rejected rows as quarantine rows; a raw text over ``max_chars`` is cut so one row cannot bloat it."""
    raw = F.when(F.length("raw") > max_chars, F.concat(F.substring("raw", 1, max_chars), F.lit(TRUNCATED)))
    return df.where(F.col("reason").isNotNull()).select(
        F.lit(ds).alias("ds"), F.lit(source).alias("source"), "raw_file", raw.otherwise(F.col("raw")).alias("raw"), "reason"
    )


def _reasons(df: DataFrame) -> dict[str, int]:
    return {r["reason"]: r["count"] for r in df.where(F.col("reason").isNotNull()).groupBy("reason").count().collect()}


def _check_reject_share(src: SourceConfig, ds: str, what: str, rows: int, reasons: dict[str, int]) -> None:
    """DropRejected when more than ``source.max_reject_share`` of ``rows`` were rejected."""
    rejected = sum(reasons.values())
    if rows and rejected / rows > src.max_reject_share:
        raise DropRejected(
            f"config key 'source.max_reject_share': {rejected} of {rows} {what} rows of ds={ds} were rejected "
            f"({rejected / rows:.0%} > {src.max_reject_share:.0%}) {reasons}; they are in "
            f"{tables.QUARANTINE_REJECTS.qualified}, bronze was not written")


def _already_present(spark: SparkSession, cfg: Config, good: DataFrame) -> tuple[int, int]:
    """(rows of ``good`` whose event key bronze already holds, those of them with another rating or weight)."""
    if not tables.exists(spark, cfg, tables.BRONZE_INTERACTIONS):
        return 0, 0
    bronze = tables.read(spark, cfg, tables.BRONZE_INTERACTIONS)
    on = [good[k].eqNullSafe(bronze[k]) for k in tables.BRONZE_INTERACTIONS.key]
    changed = ~good["rating"].eqNullSafe(bronze["rating"]) | ~good["weight"].eqNullSafe(bronze["weight"])
    row = good.join(bronze, on).agg(F.count(F.lit(1)).alias("present"), F.count(F.when(changed, 1)).alias("changed")).first()
    return int(row["present"]), int(row["changed"])


def check_counts(result: IngestResult, ds: str) -> None:
    """Every row read is inserted, already in bronze, or quarantined: RuntimeError when they do not add up."""
    accounted = result.interactions_inserted + result.already_present + result.interactions_quarantined
    if accounted != result.rows_read:
        raise RuntimeError(
            f"ingest ds={ds}: {result.rows_read} rows read, but {result.interactions_inserted} inserted + "
            f"{result.already_present} already present + {result.interactions_quarantined} quarantined = {accounted}")


def _merge_interactions(spark: SparkSession, cfg: Config, parsed: DataFrame, ds: str, result: IngestResult) -> None:
    """MERGE the valid rows into bronze; a re-delivered key with another value follows ``source.redelivery``."""
    good = parsed.where(F.col("reason").isNull()).select(
        F.lit(cfg.source.name).alias("source"), "user_key", "item_key", "rating", "weight", "ts",
        F.lit(ds).alias("ingest_ds"), "raw_file",
    )
    result.already_present, result.redelivered_changed = _already_present(spark, cfg, good)
    result.interactions_inserted = tables.merge_insert(spark, good, cfg, tables.BRONZE_INTERACTIONS,
                                                       update=cfg.source.redelivery == "latest")


def _merge_items(spark: SparkSession, cfg: Config, items: DataFrame, ds: str) -> int:
    good_items = items.where(F.col("reason").isNull()).select(
        "item_key", "title", "genres", "year", "tags", "description",
        item_text(F.col("title"), F.col("genres"), F.col("tags"), F.col("description")).alias("text"),
        F.lit(cfg.source.name).alias("source"), F.lit(ds).alias("ingest_ds"),
    )
    return tables.merge_insert(spark, good_items, cfg, tables.BRONZE_ITEMS, update=True)


@faults.job("ingest")
def run(spark: SparkSession, cfg: Config, ds: str) -> IngestResult:
    """Ingest the configured source for run date ``ds`` (that night's drop when ``source.path`` has ``{ds}``)."""
    src = cfg.source
    _check_drop(src, ds)
    raw = read_raw_interactions(spark, src, ds)
    parsed = flag_batch_duplicates(validate_interactions(raw, src, ds), EVENT_KEY).cache()
    items = read_items(spark, src, ds)
    result = IngestResult(rows_read=parsed.count())
    if result.rows_read == 0:
        raise DropRejected(f"config key 'source.path': the drop for ds={ds} at {drop_root(src, ds)} holds no "
                           "interaction rows; nothing was written")
    reasons = _reasons(parsed)
    result.interactions_quarantined = sum(reasons.values())
    rejects = _reject_rows(parsed, ds, src.name, src.max_field_chars)
    item_reasons: dict[str, int] = {}
    if items is not None:
        items = flag_batch_duplicates(items, ("item_key",)).cache()
        item_reasons = _reasons(items)
        rejects = rejects.unionByName(_reject_rows(items, ds, src.name, src.max_field_chars))
    result.rejects_by_reason = {r: reasons.get(r, 0) + item_reasons.get(r, 0) for r in {*reasons, *item_reasons}}
    # Quarantine first, even for a drop about to be refused: the rejects are the evidence. Replacing
    # this (ds, source) slice keeps reruns from duplicating them.
    tables.replace_where(rejects, cfg, tables.QUARANTINE_REJECTS, tables.equals(ds=ds, source=src.name))
    _check_reject_share(src, ds, "interaction", result.rows_read, reasons)
    if items is not None:
        _check_reject_share(src, ds, "item", items.count(), item_reasons)

    _merge_interactions(spark, cfg, parsed, ds, result)
    if items is not None:
        result.items_inserted = _merge_items(spark, cfg, items, ds)
        items.unpersist()
    parsed.unpersist()
    check_counts(result, ds)
    counts = {name: value for name, value in asdict(result).items() if name != "rejects_by_reason"}
    quality.record(spark, cfg, ds, "ingest", {**counts, "rejects": result.rejects,
                                              **{f"rejects_{r}": n for r, n in result.rejects_by_reason.items()}})
    log.info(
        "ingest %s: %d rows read, %d new interactions, %d already present (%d with another value, kept the %s), "
        "%d new items, %d rejects %s", ds, result.rows_read, result.interactions_inserted, result.already_present,
        result.redelivered_changed, src.redelivery, result.items_inserted, result.rejects, result.rejects_by_reason,
    )
    return result
