"""The whole nightly run in one process (``make run``): ingest -> features -> embed -> train -> segment -> score -> evaluate."""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

from lakerec import embed, evaluate, features, ingest, quality, report, score, segment, tables, train
from lakerec.cli import load, parse_args, setup_logging
from lakerec.config import Config
from lakerec.model_store import latest_model_dir, models_root
from lakerec.spark import build_spark

log = logging.getLogger("lakerec.pipeline")


# The nightly order; airflow/lakerec_nightly.py runs the same jobs in the same order. Segment follows
# train (it clusters the serving model's user vectors) and precedes score (cold-start users' lists).
STAGES = (
    ("ingest", ingest.run), ("features", features.run), ("embed", embed.run), ("train", train.run),
    ("segment", segment.run), ("score", score.run), ("evaluate", evaluate.run),
)


def run_all(spark, cfg: Config, ds: str) -> dict:
    """Run every stage for ``ds`` in order; returns each stage's result."""
    results = {}
    for name, stage in STAGES:
        started = time.time()
        results[name] = stage(spark, cfg, ds)
        log.info("stage %s finished in %.1fs", name, time.time() - started)
    models = {role: models_root(cfg) / meta["model_version"] for role, meta in results["train"].items()}
    results["report"] = report.write(spark, cfg, ds, results["evaluate"], models)
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    setup_logging()
    args = parse_args("lakerec nightly pipeline (all stages)", argv)
    cfg = load(args)
    spark = build_spark(cfg)
    started = time.time()
    results = run_all(spark, cfg, args.ds)
    ing = results["ingest"]
    print(f"\nlakerec nightly run ds={args.ds} finished in {time.time() - started:.0f}s")
    print(f"ingest: {ing.rows_read} rows read, {ing.interactions_inserted} new, {ing.rejects} quarantined {ing.rejects_by_reason}")
    for role, meta in results["train"].items():
        print(f"{role} model: {meta['model_version']} (final loss {meta['final_loss']:.4f})")
    seg = results["segment"]
    if seg["enabled"]:
        silhouette = "n/a" if seg["silhouette"] is None else f"{seg['silhouette']:.3f}"
        print(f"segments: k={seg['k']} (silhouette {silhouette}), sizes {seg['sizes']}")
    print(f"served users by reason: {results['score']['users_by_reason']}")
    print("\ndata quality:\n" + quality.report(spark, cfg, args.ds))
    print("\n" + report.format_table(results["evaluate"]) + "\n")
    print("outputs:")
    for table in (tables.RECOMMENDATIONS, tables.METRICS, tables.DATA_QUALITY, tables.QUARANTINE_REJECTS,
                  tables.ITEM_FEATURES, tables.USER_FEATURES, tables.ITEM_TEXT_EMBEDDINGS, tables.USER_SEGMENTS,
                  tables.SEGMENT_PROFILES):
        print(f"  {table.qualified:<28} {table.path(cfg)}")
    print(f"  {'serving model (LATEST)':<28} {latest_model_dir(cfg)}")
    print(f"  {'evaluation report':<28} {results['report']}")
    spark.stop()


if __name__ == "__main__":
    main()
