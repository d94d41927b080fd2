"""Data-quality report: rows in and out of every stage, rejects by reason, sizes, density, splits.

Each stage records its numbers for the run date in serving.data_quality (replacing its own rows,
so reruns do not duplicate); the pipeline prints the report at the end of a run.
"""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakerec import tables
from lakerec.config import Config


def record(spark: SparkSession, cfg: Config, ds: str, stage: str, metrics: dict[str, float]) -> None:
    """Replace ``stage``'s quality rows for ``ds`` with ``metrics``."""
    rows = [(ds, stage, name, float(value)) for name, value in sorted(metrics.items())]
    df = spark.createDataFrame(rows, tables.DATA_QUALITY.schema)
    tables.replace_where(df, cfg, tables.DATA_QUALITY, tables.equals(ds=ds, stage=stage))


def report(spark: SparkSession, cfg: Config, ds: str) -> str:
    """The run's quality rows as aligned text, grouped by stage."""
    if not tables.exists(spark, cfg, tables.DATA_QUALITY):
        return "(no data-quality rows)"
    rows = tables.read(spark, cfg, tables.DATA_QUALITY).where(F.col("ds") == ds).orderBy("stage", "metric").collect()
    lines = []
    for r in rows:
        value = f"{r['value']:.6f}" if r["value"] != int(r["value"]) else f"{int(r['value']):,}"
        lines.append(f"  {r['stage']:<10} {r['metric']:<32} {value:>14}")
    return "\n".join(lines)
