"""One night as a unit, as of its run date: what a run for ``ds`` may see, and the manifest that pins it.

A run for ``ds`` sees the bronze rows ingested on or before ``ds`` whose event time is not after
the end of ``ds`` (UTC), and nothing else. The features job writes the night's tables, then the
manifest (their Delta versions) last; train, score and evaluate read those versions through
:class:`Snapshot`. So a crash mid-features leaves the previous manifest in force, and a later
rewrite of a table (the next night, or a backfill) never changes what another night reads.

Ingest and features import this module, and their drivers need no torch: :mod:`lakerec.model_store`
(which imports torch) is imported only where a model's role or folder is asked for.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from datetime import date, datetime, timedelta, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakerec import tables
from lakerec.config import Config

log = logging.getLogger(__name__)

DS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# What the features job writes for a night, in the order it writes them; the manifest pins each.
SNAPSHOT_TABLES = (
    tables.ID_MAP_USERS, tables.ID_MAP_ITEMS, tables.GENRE_VOCABULARY, tables.SILVER_INTERACTIONS,
    tables.ITEM_FEATURES, tables.USER_FEATURES, tables.TRAINING_EXAMPLES, tables.SERVING_EXAMPLES,
)


def checked_ds(ds: str) -> str:
    """``ds`` when it is a real ``YYYY-MM-DD`` date (it reaches Delta predicates), else ValueError."""
    if not DS_PATTERN.match(ds):
        raise ValueError(f"ds must be YYYY-MM-DD, got {ds!r}")
    date.fromisoformat(ds)
    return ds


def end_of_day(ds: str) -> int:
    """Epoch seconds of the first instant after ``ds`` (UTC): events before it belong to the night."""
    start = datetime.fromisoformat(checked_ds(ds)).replace(tzinfo=timezone.utc)
    return int((start + timedelta(days=1)).timestamp())


def arrived_by(bronze: DataFrame, ds: str) -> DataFrame:
    """The bronze rows a run for ``ds`` may see: ingested on or before it, events not after its end."""
    arrived = F.col("ingest_ds") <= F.lit(checked_ds(ds))
    if "ts" in bronze.columns:
        arrived = arrived & (F.col("ts").isNull() | (F.col("ts") < F.lit(end_of_day(ds))))
    return bronze.where(arrived)


def backtest_due(cfg: Config, ds: str) -> bool:
    """Whether ``ds`` trains and evaluates the backtest model (``nightly.backtest_every``; 7: Sundays)."""
    every = cfg.nightly.backtest_every
    return every > 0 and date.fromisoformat(checked_ds(ds)).toordinal() % every == 0


def write_manifest(spark: SparkSession, cfg: Config, ds: str) -> dict[str, int]:
    """Record the current versions of the night's tables as ``ds``'s snapshot: the features job's last commit."""
    versions = {t.qualified: tables.version(spark, cfg, t) for t in SNAPSHOT_TABLES}
    rows = [(ds, name, version) for name, version in versions.items()]
    tables.replace_where(spark.createDataFrame(rows, tables.MANIFEST.schema), cfg, tables.MANIFEST,
                         tables.equals(ds=checked_ds(ds)))
    return versions


@dataclass(frozen=True)
class Snapshot:
    """The table versions of one night, as its manifest records them."""

    ds: str
    versions: dict[str, int]

    @classmethod
    def load(cls, spark: SparkSession, cfg: Config, ds: str) -> "Snapshot":
        """``ds``'s manifest; a clear error when the features job has not finished that night."""
        rows = []
        if tables.exists(spark, cfg, tables.MANIFEST):
            rows = tables.read(spark, cfg, tables.MANIFEST).where(F.col("ds") == checked_ds(ds)).collect()
        versions = {r["table"]: r["version"] for r in rows}
        missing = [t.qualified for t in SNAPSHOT_TABLES if t.qualified not in versions]
        if missing:
            raise RuntimeError(f"no complete feature snapshot for ds={ds} in {tables.MANIFEST.path(cfg)} "
                               f"(missing {missing}): run the features job for {ds} first")
        return cls(ds, versions)

    def version(self, table: tables.Table) -> int:
        return self.versions[table.qualified]

    def read(self, spark: SparkSession, cfg: Config, table: tables.Table) -> DataFrame:
        """``table`` as this night wrote it."""
        return tables.read(spark, cfg, table, self.version(table))

    def model_dir(self, cfg: Config, role: str) -> Path:
        """This night's finished ``role`` model (serving or backtest), or a clear error."""
        from lakerec import model_store

        return model_store.finished_model_dir(cfg, self.ds, role, self.version(examples_table(role)))


def examples_table(role: str) -> tables.Table:
    """What a role trains on: the train split (backtest) or all history as of ds (serving)."""
    from lakerec.model_store import BACKTEST, SERVING

    return {BACKTEST: tables.TRAINING_EXAMPLES, SERVING: tables.SERVING_EXAMPLES}[role]


def previous_ds(spark: SparkSession, cfg: Config, table: tables.Table, ds: str) -> str | None:
    """The latest ``ds`` before ``ds`` that ``table`` (partitioned by ds) holds, or None."""
    if not tables.exists(spark, cfg, table):
        return None
    return tables.read(spark, cfg, table).where(F.col("ds") < checked_ds(ds)).agg(F.max("ds")).first()[0]
