"""Benchmark: ingest + features jobs on synthetic data at the shape of MovieLens 25M.

    make bench-features                 # 25M interactions, 162,541 users, 59,047 items
    make bench-features SCALE=0.1       # a tenth of each dimension's volume, for a quick run

Reports wall time per stage and the peak resident memory of the whole process tree (driver
Python + Spark JVM + Python workers), sampled every 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import psutil

from lakerec import features, ingest
from lakerec.config import load_config
from lakerec.spark import build_spark
from lakerec.synthetic import ML25M_ITEMS, ML25M_USERS, write_movielens

OUT = Path(__file__).resolve().parent / "out" / "features"
FULL = {"users": ML25M_USERS, "items": ML25M_ITEMS, "interactions": 25_000_000}


class PeakMemory:
    """Samples the RSS of this process and all its descendants."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.5)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", "1")))
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args()
    shape = {k: max(100, int(v * args.scale)) for k, v in FULL.items()}
    data = OUT / f"synthetic-{shape['users']}-{shape['items']}-{shape['interactions']}"
    if not (data / "ratings.csv").is_file():
        started = time.time()
        rows = write_movielens(data, shape["users"], shape["items"], shape["interactions"], seed=0, progress=True)
        print(f"generated {rows:,} ratings in {time.time() - started:.0f}s")
    ratings = sum(1 for _ in (data / "ratings.csv").open()) - 1

    warehouse = OUT / "warehouse"
    shutil.rmtree(warehouse, ignore_errors=True)
    cfg = load_config("local", overrides=[
        f"warehouse={warehouse}", f"models_dir={OUT / 'models'}", f"source.path={data}", "source.name=synthetic",
        f"spark.driver_memory={args.driver_memory}", "spark.shuffle_partitions=16", "features.training_files=16",
    ])
    times = {}
    with PeakMemory() as memory:
        spark = build_spark(cfg)
        for name, stage in (("ingest", ingest.run), ("features", features.run)):
            started = time.time()
            result = stage(spark, cfg, "2026-01-01")
            times[name] = time.time() - started
            print(f"{name}: {times[name]:.0f}s {result}")
        spark.stop()
    load = os.getloadavg()
    print("\n| shape (users x items, ratings) | ingest s | features s | total s | peak RSS GiB | machine | load avg (1/5/15 min) |")
    print("|---|---:|---:|---:|---:|---|---|")
    print(
        f"| {shape['users']:,} x {shape['items']:,}, {ratings:,} | {times['ingest']:.0f} | {times['features']:.0f} | "
        f"{sum(times.values()):.0f} | {memory.peak / 2**30:.1f} | {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.processor() or platform.machine()} | "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} |"
    )


if __name__ == "__main__":
    main()
