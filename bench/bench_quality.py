"""Benchmark: recommendation quality of the default model against its baselines, on real data.

    make bench-quality                       # ml-100k (Microsoft Recommenders protocol) + ml-latest-small (temporal)
    make bench-quality ML100K=/path/to/ml-100k

ml-100k: stratified random 75/25 split per user (seed 42), every rating a positive, K=10, items
seen in training removed from the ranking. ml-latest-small: per-user temporal split (latest 20%).
Each dataset runs the whole pipeline (ingest -> ... -> evaluate) in its own warehouse under
bench/out/quality/, with the project's default model and training settings. Writes the results
table into BENCHMARKS.md ("Quality" section) and ends with the line
``ml100k ndcg@10 model=… als=… ease=… pop=…``.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import time
from pathlib import Path

from lakerec.config import REPO_ROOT, load_config
from lakerec.pipeline import run_all
from lakerec.spark import build_spark

OUT = REPO_ROOT / "bench" / "out" / "quality"
BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
MODELS = ("model", "als", "ease", "popularity")
METRICS = ("precision", "recall", "ndcg", "map")

DATASETS = {
    "ml100k": [
        "source.format=movielens_100k", "source.name=ml-100k", "source.rating_min=1", "source.rating_max=5",
        "features.split=random_user", "features.test_fraction=0.25", "features.split_seed=42",
        "features.min_user_interactions=1", "features.positive_threshold=null",
    ],
    "ml-latest-small": [
        f"source.path={REPO_ROOT / 'data' / 'ml-latest-small'}", "features.split=temporal_user",
        "features.test_fraction=0.2",
    ],
}


def run_dataset(name: str, overrides: list[str]) -> tuple[dict, float]:
    """Run the pipeline on one dataset; returns {(model, metric): value} at K=10 and seconds."""
    root = OUT / name
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config("local", overrides=[
        f"warehouse={root / 'warehouse'}", f"models_dir={root / 'models'}", "evaluate.k=[10]", *overrides,
    ])
    spark = build_spark(cfg)
    started = time.time()
    results = run_all(spark, cfg, "2026-01-01")
    seconds = time.time() - started
    values = {(r["model"], r["metric"]): r["value"] for r in results["evaluate"] if r["k"] == 10 or r["metric"] in ("rmse", "mae")}
    return values, seconds


def _table(name: str, values: dict, seconds: float) -> str:
    extra = [m for m in ("rmse", "mae") if any(metric == m for _, metric in values)]
    header = "| model | " + " | ".join(f"{m}@10" for m in METRICS) + "".join(f" | {m}" for m in extra) + " |"
    lines = [f"**{name}** (pipeline {seconds:.0f}s)", "", header, "|---" * (1 + len(METRICS) + len(extra)) + "|"]
    for model in MODELS:
        if not any(m == model for m, _ in values):
            continue
        cells = [f"{values[(model, m)]:.4f}" if (model, m) in values else "-" for m in (*METRICS, *extra)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(text: str, marker: str = "quality", heading: str = "Quality") -> None:
    """Put ``text`` between BENCHMARKS.md's ``<!-- marker:begin/end -->`` lines (a new ``heading`` section when absent)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    current = BENCHMARKS.read_text() if BENCHMARKS.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in current:
        current = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, current, flags=re.S)
    else:
        current = current.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    BENCHMARKS.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", default=os.environ.get("ML100K") or str(REPO_ROOT.parent / "shared" / "data" / "ml-100k"))
    args = parser.parse_args()
    if not Path(args.ml100k, "u.data").is_file():
        raise SystemExit(f"ml-100k not found at {args.ml100k} (it may not be redistributed): pass ML100K=/path/to/ml-100k")
    DATASETS["ml100k"].append(f"source.path={args.ml100k}")

    sections, scores = [], {}
    for name, overrides in DATASETS.items():
        values, seconds = run_dataset(name, overrides)
        sections.append(_table(name, values, seconds))
        scores[name] = values
    load = os.getloadavg()
    machine = f"{os.cpu_count()} cores, {platform.machine()}, load avg {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    text = (
        f"Command: `make bench-quality`. Machine: {machine}. Date: {time.strftime('%Y-%m-%d')}.\n\n"
        + "\n\n".join(sections)
    )
    write_section(text)
    ml100k = scores["ml100k"]
    print(text)
    print(
        "ml100k ndcg@10 "
        + " ".join(f"{short}={ml100k.get((model, 'ndcg'), float('nan')):.3f}"
                   for short, model in (("model", "model"), ("als", "als"), ("ease", "ease"), ("pop", "popularity")))
    )


if __name__ == "__main__":
    main()
