"""An evaluation's list metrics in Spark: one action per cut-off (how they used to run) vs every cut-off
in one action (how they run now), at the embedded data's shape.

610 users x top-100 lists over 9,742 items with 20-genre vectors, cut-offs 10, 20 and 100 (the
default ``evaluate.k``), in local mode with the `local` config's Spark settings. Each way runs
alternately, best of 3 after a warm-up; both must give the same numbers.
    make bench-metrics       (or: .venv/bin/python bench/bench_metrics.py)
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable

from lakerec.config import load_config
from lakerec.metrics_spark import catalogue_coverage, intra_list_diversity, novelty, ranking_metrics
from lakerec.spark import build_spark

USERS, ITEMS, GENRES, TOP, KS, REPEATS = 610, 9742, 20, 100, [10, 20, 100], 3


def _close(a: dict, b: dict) -> bool:
    """Same keys and values equal to rounding, nested dicts included."""
    if a.keys() != b.keys():
        return False
    return all(_close(a[k], b[k]) if isinstance(a[k], dict) else math.isclose(a[k], b[k], abs_tol=1e-9) for k in a)


def _timed(fn: Callable[[], dict]) -> tuple[float, dict]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    spark = build_spark(load_config("local"))
    rng = random.Random(1)
    recs = spark.createDataFrame(
        [(u, i, r + 1) for u in range(USERS) for r, i in enumerate(rng.sample(range(ITEMS), TOP))],
        "user_idx int, item_idx int, rank int").cache()
    truth = spark.createDataFrame(
        [(u, i) for u in range(USERS) for i in rng.sample(range(ITEMS), 40)], "user_idx int, item_idx int").cache()
    counts = spark.createDataFrame([(i, rng.randint(1, 300)) for i in range(ITEMS)], "item_idx int, count long").cache()
    genres = spark.createDataFrame([(i, [float(rng.random() < 0.15) for _ in range(GENRES)]) for i in range(ITEMS)],
                                   "item_idx int, genre_vector array<float>").cache()
    for df in (recs, truth, counts, genres):
        df.count()
    metrics = {
        "ranking (5 metrics)": lambda ks: ranking_metrics(recs, truth, ks),
        "coverage": lambda ks: catalogue_coverage(recs, ITEMS, ks),
        "novelty": lambda ks: novelty(recs, counts, ks),
        "diversity": lambda ks: intra_list_diversity(recs, genres, ks),
    }
    print(f"{USERS} users x top-{TOP}, {ITEMS} items, k={KS}; best of {REPEATS} (s)")
    print(f"| metric | one action per k | all k in one action |\n|---|---:|---:|")
    totals = [0.0, 0.0]
    for name, metric in metrics.items():
        metric(KS)  # warm-up
        per_k, at_once = [], []
        for _ in range(REPEATS):
            seconds, separate = _timed(lambda: {k: metric([k])[k] for k in KS})
            per_k.append(seconds)
            seconds, together = _timed(lambda: metric(KS))
            at_once.append(seconds)
            if not _close(separate, together):
                raise AssertionError(f"{name}: per-k {separate} != at once {together}")
        totals[0] += min(per_k)
        totals[1] += min(at_once)
        print(f"| {name} | {min(per_k):.2f} | {min(at_once):.2f} |")
    print(f"| **all four** | **{totals[0]:.2f}** | **{totals[1]:.2f}** |")
    spark.stop()


if __name__ == "__main__":
    main()
