"""The fault suite's crash and concurrency cases: a crash after every write of a job, and two writers
on one warehouse. Each case is made deterministic by an injection point, never by timing."""
from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import PIPELINE_DS, crash_at_each_new_write, crash_at_every_write, make_config
from lakerec import embed, evaluate, faults, features, ingest, model_store, score, tables, train
from lakerec.features import extend_id_map, update_id_map
from lakerec.model_store import SERVING

pytestmark = pytest.mark.faults
DS = "2026-01-01"


def _keys(spark, *keys: str):
    return spark.createDataFrame([(k,) for k in keys], "key string")


def _id_map(spark, cfg) -> list[tuple[str, int]]:
    return sorted((r["key"], r["idx"]) for r in tables.read(spark, cfg, tables.ID_MAP_USERS).collect())


def test_two_runs_extending_an_id_map_at_once_commit_dense_unique_ids(spark, tmp_path):
    """The other run commits between this run's read of the map and its commit: this run's rows,
    numbered from the version it read, must not land beside the other's; it renumbers and retries."""
    cfg = make_config(tmp_path, tmp_path)
    update_id_map(spark, cfg, tables.ID_MAP_USERS, _keys(spark, "a", "b"), DS)
    raced = []

    def numbered_while_another_run_commits(existing):
        rows = extend_id_map(existing, _keys(spark, "b", "c", "d"), DS)
        if not raced:
            raced.append(update_id_map(spark, cfg, tables.ID_MAP_USERS, _keys(spark, "c", "x", "y"), DS))
        return rows

    added = tables.append_numbered(spark, cfg, tables.ID_MAP_USERS, numbered_while_another_run_commits)

    mapping = _id_map(spark, cfg)
    assert raced == [3] and added == 1  # the other run added c, x, y; this one only d
    assert sorted(k for k, _ in mapping) == ["a", "b", "c", "d", "x", "y"]  # each key once
    assert sorted(i for _, i in mapping) == list(range(6))  # dense, each index once
    assert dict(mapping)["d"] == 5


def test_a_write_that_loses_to_a_concurrent_commit_is_retried(spark, tmp_path, caplog):
    """A replace of one ds is held inside its Delta transaction until another writer has committed to
    the same partition; its commit then conflicts, and the retry lands this writer's rows whole."""
    cfg = make_config(tmp_path, tmp_path)
    table = tables.DATA_QUALITY
    rows = lambda stage, value: spark.createDataFrame([(DS, stage, "rows", value)], table.schema)  # noqa: E731
    tables.replace_where(rows("first", 1.0), cfg, table, tables.equals(ds=DS))
    inside, release = tmp_path / "inside", tmp_path / "release"

    @F.udf("double")
    def held(value):  # runs in a Python worker while the write's transaction is open
        if not release.exists():
            inside.touch()
            while not release.exists():
                time.sleep(0.01)
        return value

    held_rows = rows("held", 2.0).coalesce(1).withColumn("value", held("value"))
    failures: list[BaseException] = []

    def write() -> None:
        try:
            tables.replace_where(held_rows, cfg, table, tables.equals(ds=DS))
        except BaseException as exc:  # surfaced in the test thread below
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    while not inside.exists():
        assert writer.is_alive(), failures
        time.sleep(0.01)
    tables.replace_where(rows("other", 3.0), cfg, table, tables.equals(ds=DS))
    release.touch()
    writer.join()

    assert not failures, failures
    assert "a concurrent commit conflicted" in caplog.text
    assert [(r["stage"], r["value"]) for r in tables.read(spark, cfg, table).collect()] == [("held", 2.0)]


def test_a_hostile_value_cannot_widen_a_replace_where(spark, tmp_path):
    cfg = make_config(tmp_path, tmp_path)
    table = tables.DATA_QUALITY
    rows = lambda *stages: spark.createDataFrame([(DS, s, "rows", 1.0) for s in stages], table.schema)  # noqa: E731
    tables.replace_where(rows("ingest", "score"), cfg, table, tables.equals(ds=DS))
    hostile = ("x' OR '1'='1", "y\\' OR \\'1\\'=\\'1")  # a quote, and a backslash before one
    for stage in hostile:
        tables.replace_where(rows(stage), cfg, table, tables.equals(ds=DS, stage=stage))
    assert sorted(r["stage"] for r in tables.read(spark, cfg, table).collect()) == sorted(["ingest", "score", *hostile])


def test_a_crash_after_each_score_write_keeps_the_last_good_lists_then_converges(spark, pipeline_run, monkeypatch):
    cfg, results = pipeline_run
    recs = lambda: sorted(tuple(r) for r in tables.read(spark, cfg, tables.RECOMMENDATIONS).collect())  # noqa: E731
    served = recs()

    def check(message: str) -> None:
        assert recs() == served  # serving still holds the last good night, whatever was staged

    summary = {}
    writes = crash_at_every_write(monkeypatch, "score", lambda: summary.update(score.run(spark, cfg, PIPELINE_DS)),
                                  check)
    assert writes == 2  # staging, then serving
    assert summary["model_version"] == results["train"][SERVING]["model_version"]  # the night's serving model
    assert recs() == served  # the rerun converged to the same rows, not duplicated ones


def test_a_crash_after_each_embed_write_then_a_rerun_converges(spark, pipeline_run, monkeypatch):
    cfg, _ = pipeline_run
    embeddings = lambda: sorted(str(r) for r in tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).collect())  # noqa: E731
    before = embeddings()
    writes = crash_at_every_write(monkeypatch, "embed", lambda: embed.run(spark, cfg, PIPELINE_DS))
    assert writes == 1 and embeddings() == before and before  # nothing new to embed: the quality row only


def test_a_crash_after_the_evaluate_write_leaves_the_nights_metrics_once(spark, pipeline_run, monkeypatch):
    """evaluate writes once (it replaces the night's metrics): a crash right after that write leaves the
    rows whole and not doubled, and a rerun is that same replace again."""
    cfg, _ = pipeline_run
    metrics = lambda: sorted((r["model"], r["metric"], r["k"], round(r["value"], 9))  # noqa: E731
                             for r in tables.read(spark, cfg, tables.METRICS).where(F.col("ds") == PIPELINE_DS).collect())
    before = metrics()
    monkeypatch.setenv(faults.FAULT_ENV, "evaluate.write:1=raise")
    with pytest.raises(faults.InjectedFault, match=tables.METRICS.qualified):
        evaluate.run(spark, cfg, PIPELINE_DS)
    assert metrics() == before


def test_a_second_training_of_a_model_version_in_progress_fails_clearly(spark, pipeline_run):
    cfg, results = pipeline_run
    version = results["train"][SERVING]["model_version"]
    with model_store.lock(model_store.models_root(cfg), version):
        with pytest.raises(model_store.ModelLockedError, match=f"{version} is being trained by another run"):
            train.run(spark, cfg, PIPELINE_DS)
    assert train.run(spark, cfg, PIPELINE_DS)[SERVING]["model_version"] == version


def test_a_crash_after_each_ingest_write_then_a_rerun_converges(spark, source_copy, tmp_path, monkeypatch):
    with (source_copy / "ratings.csv").open("a") as fh:
        fh.write("7,12,not-a-number,1300000000\n8,12,4.0\n")  # a bad rating and a short row: quarantined
    clean = make_config(tmp_path / "clean", source_copy)
    ingest.run(spark, clean, DS)
    cfg = make_config(tmp_path / "crashing", source_copy)
    writes = crash_at_every_write(monkeypatch, "ingest", lambda: ingest.run(spark, cfg, DS))
    assert writes >= 4  # quarantine, bronze interactions, bronze items, data quality
    for table in (tables.BRONZE_INTERACTIONS, tables.BRONZE_ITEMS, tables.QUARANTINE_REJECTS):
        rows = [sorted(str(r) for r in tables.read(spark, c, table).collect()) for c in (clean, cfg)]
        assert rows[0] == rows[1] and rows[0], table.qualified


@pytest.mark.slow
def test_a_crash_after_each_training_write_then_a_rerun_converges(spark, tiny_source, tmp_path, monkeypatch):
    """One rank, in this process (the launcher's process boundary aside, the worker's own code): a crash
    after each checkpoint, model.pt, meta.json, the rename and LATEST, each rerun resuming from what the
    crash before it left, converges to the model of a run that never crashed."""
    configs = [make_config(tmp_path / name, tiny_source, "embed.enabled=false", "nightly.backtest_every=0",
                           "train.epochs=2", "train.num_processes=1", "train.reader_workers=1",  # one reader: fixed order
                           "train.launcher=in_process", "train.max_restarts=0")  # a crash ends the run
               for name in ("clean", "crashing")]
    clean, crashing = configs
    ingest.run(spark, clean, DS)
    features.run(spark, clean, DS)
    shutil.copytree(tmp_path / "clean", tmp_path / "crashing")
    version = train.run(spark, clean, DS)[SERVING]["model_version"]
    crashed = crash_at_each_new_write(monkeypatch, lambda: train.run(spark, crashing, DS))
    epochs = [f"epoch-{e:04d}.pt" for e in range(crashing.train.epochs)]
    assert crashed == [*epochs, model_store.MODEL_FILE, model_store.META_FILE, version, model_store.LATEST_FILE]
    folders = [model_store.models_root(cfg) / version for cfg in configs]
    factors = [np.load(folder / model_store.FACTORS_FILE) for folder in folders]
    # Equal up to float32 rounding: test_resume asserts bit-identical resumed weights across torchrun processes;
    # reruns inside this one process differ from the clean run by 1e-8 here.
    assert all(np.allclose(factors[0][name], factors[1][name], rtol=0, atol=1e-6) for name in factors[0].files)
    assert json.loads((folders[1] / model_store.META_FILE).read_text())["resumed_from_epoch"] == crashing.train.epochs
    assert (model_store.models_root(crashing) / model_store.LATEST_FILE).read_text() == version
    assert not list(model_store.models_root(crashing).glob(f".*{model_store.PARTIAL_SUFFIX}"))
