"""One local SparkSession for the whole suite, and small MovieLens-layout sources written per test.

Tiers: ``make test-fast`` runs ``-m "not slow"``; ``slow`` marks the end-to-end tests (every test
that uses the whole-pipeline fixture is marked here), real torchrun launches, spark-submit and soaks.
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from lakerec import faults
from lakerec.config import REPO_ROOT, Config, load_config
from lakerec.synthetic import write_movielens

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TINY = {"n_users": 40, "n_items": 60, "n_interactions": 1200, "seed": 3}


def make_config(root: Path, source: Path, *overrides: str) -> Config:
    """A validated config whose warehouse and models live under ``root``."""
    return load_config(
        "local",
        overrides=[
            f"warehouse={root}/warehouse",
            f"models_dir={root}/models",
            f"reports_dir={root}/reports",
            f"source.path={source}",
            "source.name=tiny",
            "spark.shuffle_partitions=2",
            "train.epochs=3",
            "score.top_n=20",
            "segment.k_grid=[2, 3]",
            *overrides,
        ],
    )


def crash_at_every_write(monkeypatch: pytest.MonkeyPatch, job: str, run: Callable[[], Any],
                         after_crash: Callable[[str], None] = lambda message: None) -> int:
    """Run ``run`` with a crash after its 1st write, then (on what that left) after its 2nd, and so on
    until a run gets through; ``after_crash`` checks what each crash left. Returns how many crashed."""
    for k in itertools.count(1):
        monkeypatch.setenv(faults.FAULT_ENV, f"{job}.write:{k}=raise")
        try:
            run()
        except faults.InjectedFault as exc:
            after_crash(str(exc))
            continue
        finally:
            monkeypatch.delenv(faults.FAULT_ENV)
        return k - 1
    raise AssertionError("unreachable")


def crash_at_each_new_write(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Any]) -> list[str]:
    """For a job that resumes (it skips the writes it had finished, so a write's index moves): each
    rerun crashes after the first write it has not crashed after before, until one gets through.
    Returns the writes in the order they crashed."""
    crashed: list[str] = []

    def wrote(what: str) -> None:
        if what not in crashed:
            crashed.append(what)
            raise faults.InjectedFault(f"stopped after writing {what}")

    monkeypatch.setattr(faults, "wrote", wrote)
    while True:
        try:
            run()
            return crashed
        except faults.InjectedFault:
            continue


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from lakerec.spark import build_spark

    root = tmp_path_factory.mktemp("spark")
    # Tiny tables: whole-stage codegen and adaptive re-planning cost more than they save (about 13% of the
    # Spark tests' time); `make run`, the cluster and the Airflow runs keep Spark's defaults.
    cfg = make_config(root, REPO_ROOT / "data" / "ml-latest-small",
                      f"spark.conf={{spark.local.dir: '{root}', spark.sql.codegen.wholeStage: 'false', "
                      "spark.sql.adaptive.enabled: 'false'}")
    session = build_spark(cfg)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    """A small synthetic MovieLens-latest source (ratings.csv, movies.csv, tags.csv)."""
    out = tmp_path_factory.mktemp("tiny_source")
    write_movielens(out, **TINY)
    return out


@pytest.fixture
def source_copy(tiny_source, tmp_path) -> Path:
    """A private copy of the tiny source that a test may append bad lines to."""
    dest = tmp_path / "source"
    shutil.copytree(tiny_source, dest)
    return dest


def requires_shared_data(name: str):
    """Skip (with the reason) when ../shared/data/<name> is not beside the checkout."""
    return pytest.mark.skipif(
        not (SHARED_DATA / name).is_dir(),
        reason=f"{SHARED_DATA / name} is absent: MovieLens data under ../shared is only beside CI checkouts",
    )


PIPELINE_DS = "2026-01-01"


@pytest.fixture(scope="session")
def pipeline_run(spark, tiny_source, tmp_path_factory):
    """The whole nightly pipeline once on the tiny source: (cfg, results by stage)."""
    from lakerec.pipeline import run_all

    root = tmp_path_factory.mktemp("pipeline")
    cfg = make_config(root, tiny_source, "evaluate.k=[5, 10]")
    return cfg, run_all(spark, cfg, PIPELINE_DS)


def pytest_collection_modifyitems(items) -> None:
    """Tests on the whole-pipeline fixture train and evaluate end to end: the slow tier."""
    for item in items:
        if "pipeline_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
