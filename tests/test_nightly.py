"""Every night as of that night: daily drops, backfills that cannot publish the future, a manifest
that makes a night one unit, and a serving model that has seen each user's latest activity."""
from __future__ import annotations

import csv
import hashlib
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from conftest import crash_at_every_write, make_config
from lakerec import features, ingest, score, tables, train
from lakerec.model_store import BACKTEST, FACTORS_FILE, LATEST_FILE, META_FILE, SERVING, models_root
from lakerec.models import FactorModel, top_n_block
from lakerec.pipeline import run_all
from lakerec.snapshot import SNAPSHOT_TABLES, Snapshot, end_of_day

pytestmark = pytest.mark.slow

NIGHT_A, NIGHT_B = "2011-12-31", "2023-12-31"
NEW_IN_B = ("1001", "1002", "1003")  # items whose first rating and metadata arrive in B's drop
# DDP itself is tested elsewhere (test_train, test_resume, the pipeline fixture): one in-process rank here.
NIGHTLY = ("embed.enabled=false", "nightly.backtest_every=0", "nightly.warm_epochs=1", "train.launcher=in_process")


def _epoch(ds: str) -> int:
    return int(datetime.fromisoformat(ds).replace(tzinfo=timezone.utc).timestamp())


def _write_drops(source: Path, out: Path) -> None:
    """Split a MovieLens-layout source into the drops of nights A and B, plus items new in B."""
    with (source / "ratings.csv").open() as fh:
        rows = list(csv.reader(fh))[1:]
    movies = {r[0]: r for r in list(csv.reader((source / "movies.csv").open()))[1:]}
    cut = end_of_day(NIGHT_A)
    drops = {NIGHT_A: [r for r in rows if int(r[3]) < cut], NIGHT_B: [r for r in rows if int(r[3]) >= cut]}
    late = _epoch(NIGHT_B) - 3600
    drops[NIGHT_B] += [[str(u), item, "5.0", str(late + u)] for u in range(1, 13) for item in NEW_IN_B]
    movies.update({item: [item, f"Brand New {item} (2023)", "Drama"] for item in NEW_IN_B})
    seen: set[str] = set()
    for ds, ratings in drops.items():
        folder = out / ds
        folder.mkdir(parents=True)
        seen |= {r[1] for r in ratings}
        with (folder / "ratings.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([["userId", "movieId", "rating", "timestamp"], *ratings])
        with (folder / "movies.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([["movieId", "title", "genres"], *(movies[i] for i in sorted(seen))])
        shutil.copyfile(source / "tags.csv", folder / "tags.csv")


def _partition_bytes(cfg, table: tables.Table, ds: str) -> dict[str, str]:
    """sha256 of every file under ``table``'s ``ds`` partition folder."""
    folder = Path(table.path(cfg)) / f"ds={ds}"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def _id_map(spark, cfg, table: tables.Table) -> dict[str, int]:
    return {r["key"]: r["idx"] for r in tables.read(spark, cfg, table).collect()}


@pytest.fixture(scope="module")
def drops(tiny_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("drops")
    _write_drops(tiny_source, out)
    return out


def test_two_nights_then_a_backfill_of_the_first(spark, drops, tmp_path):
    cfg = make_config(tmp_path, drops / "{ds}", *NIGHTLY)
    run_all(spark, cfg, NIGHT_A)
    users_a, items_a = _id_map(spark, cfg, tables.ID_MAP_USERS), _id_map(spark, cfg, tables.ID_MAP_ITEMS)
    night_a = Snapshot.load(spark, cfg, NIGHT_A)
    silver_a = sorted(night_a.read(spark, cfg, tables.SILVER_INTERACTIONS).collect())
    results_b = run_all(spark, cfg, NIGHT_B)

    # Id maps only grow; ids never change.
    users_b, items_b = _id_map(spark, cfg, tables.ID_MAP_USERS), _id_map(spark, cfg, tables.ID_MAP_ITEMS)
    assert users_a.items() <= users_b.items() and items_a.items() <= items_b.items()
    assert len(items_b) > len(items_a) and set(NEW_IN_B) <= items_b.keys() - items_a.keys()
    serving_b = models_root(cfg) / results_b["train"][SERVING]["model_version"]
    assert results_b["train"][SERVING]["warm_start"].startswith(str(models_root(cfg) / f"mf-serving-{NIGHT_A}"))
    served = {r["metric"]: r["value"] for r in results_b["evaluate"] if r["model"] == "served" and r["k"] in (0, 10)}
    assert served["returning_users"] > 0 and 0.0 <= served["hit_rate"] <= 1.0

    nightly_outputs = (tables.RECOMMENDATIONS, tables.METRICS, tables.USER_SEGMENTS, tables.SEGMENT_PROFILES)
    later = {t.qualified: _partition_bytes(cfg, t, NIGHT_B) for t in nightly_outputs}
    assert all(later.values())
    meta_b = (serving_b / META_FILE).read_bytes()
    manifest_b = sorted(tables.read(spark, cfg, tables.MANIFEST).where(F.col("ds") == NIGHT_B).collect())

    backfill = run_all(spark, cfg, NIGHT_A)

    assert (models_root(cfg) / LATEST_FILE).read_text().strip() == serving_b.name
    assert {t.qualified: _partition_bytes(cfg, t, NIGHT_B) for t in nightly_outputs} == later
    assert (serving_b / META_FILE).read_bytes() == meta_b
    assert sorted(tables.read(spark, cfg, tables.MANIFEST).where(F.col("ds") == NIGHT_B).collect()) == manifest_b
    # The backfill reproduces night A's snapshot, although the warehouse now holds night B.
    night_a = Snapshot.load(spark, cfg, NIGHT_A)
    assert sorted(night_a.read(spark, cfg, tables.SILVER_INTERACTIONS).collect()) == silver_a
    recs_a = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == NIGHT_A)
    assert recs_a.count() > 0 and backfill["score"]["model_version"] != serving_b.name
    assert recs_a.where(F.col("item_key").isin(*NEW_IN_B)).count() == 0
    assert recs_a.join(tables.read(spark, cfg, tables.ID_MAP_ITEMS).where(F.col("first_ds") > NIGHT_A)
                       .select(F.col("key").alias("item_key")), "item_key").count() == 0
    for ds in (NIGHT_A, NIGHT_B):
        user_features = Snapshot.load(spark, cfg, ds).read(spark, cfg, tables.USER_FEATURES)
        assert user_features.where(F.col("days_since_last") < 0).count() == 0


@pytest.fixture(scope="module")
def static_warehouse(spark, tiny_source, tmp_path_factory) -> Path:
    """A warehouse where night A has its snapshot and night B's ingest ran: features for B comes next."""
    root = tmp_path_factory.mktemp("pristine")
    cfg = make_config(root, tiny_source, "source.max_reject_share=1")  # half the source is after night A
    ingest.run(spark, cfg, NIGHT_A)
    features.run(spark, cfg, NIGHT_A)
    ingest.run(spark, cfg, NIGHT_B)
    return root


def _snapshot_rows(spark, cfg, ds: str) -> dict[str, list]:
    night = Snapshot.load(spark, cfg, ds)
    return {t.qualified: sorted(str(r) for r in night.read(spark, cfg, t).collect()) for t in SNAPSHOT_TABLES}


def test_a_crash_after_each_features_write_then_a_rerun_converges(spark, tiny_source, static_warehouse, tmp_path,
                                                                  monkeypatch):
    clean_root = tmp_path / "clean"
    shutil.copytree(static_warehouse, clean_root)
    clean = make_config(clean_root, tiny_source)
    features.run(spark, clean, NIGHT_B)
    expected = _snapshot_rows(spark, clean, NIGHT_B)
    previous = Snapshot.load(spark, clean, NIGHT_A)

    root = tmp_path / "crashing"
    shutil.copytree(static_warehouse, root)
    cfg = make_config(root, tiny_source)

    def check(message: str) -> None:
        assert Snapshot.load(spark, cfg, NIGHT_A) == previous  # the previous night stays in force
        if tables.MANIFEST.qualified not in message and tables.DATA_QUALITY.qualified not in message:
            with pytest.raises(RuntimeError, match="no complete feature snapshot"):
                Snapshot.load(spark, cfg, NIGHT_B)

    writes = crash_at_every_write(monkeypatch, "features", lambda: features.run(spark, cfg, NIGHT_B), check)
    assert writes >= 7  # silver, item and user features, two example tables, manifest, quality (+ id maps with new keys)
    assert _snapshot_rows(spark, cfg, NIGHT_B) == expected


def _genre_source(out: Path) -> None:
    """Comedy (items 1-40) and horror (41-60) audiences, and user 99: years of comedy, then horror lately."""
    rng = np.random.default_rng(5)
    rows, ts = [], _epoch("2012-01-01")
    for user in range(1, 41):
        pool = range(1, 41) if user <= 30 else range(41, 61)
        rows += [[user, item, 5.0, ts + int(rng.integers(0, 10**7))] for item in rng.choice(pool, 15, replace=False)]
    rows += [[99, item, 5.0, ts + i] for i, item in enumerate(rng.choice(range(1, 41), 20, replace=False))]
    rows += [[99, item, 5.0, _epoch("2016-01-01") + i] for i, item in enumerate(rng.choice(range(41, 61), 6, replace=False))]
    out.mkdir()
    with (out / "ratings.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["userId", "movieId", "rating", "timestamp"], *rows])
    with (out / "movies.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["movieId", "title", "genres"],
                                  *([i, f"Film {i} (2000)", "Comedy" if i <= 40 else "Horror"] for i in range(1, 61))])
    (out / "tags.csv").write_text("userId,movieId,tag,timestamp\n")


def _top10(model_dir: Path, user_idx: int, seen: list[int]) -> list[int]:
    """The model's top 10 for one user, ``seen`` masked, by the scorer's own top-N."""
    model = FactorModel.load(model_dir / FACTORS_FILE)
    tensors = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
               for a in (model.user_factors[[user_idx]], model.item_factors, model.item_bias))
    _, items = top_n_block(*tensors, np.array([len(seen)]), np.array(seen, np.int64), 10)
    return items[0].tolist()


def test_the_serving_model_has_seen_each_users_latest_activity(spark, tmp_path):
    """User 99's latest items are all horror: the backtest model holds them out and lists comedy; the
    serving model, trained on all history, serves horror."""
    source = tmp_path / "genres"
    _genre_source(source)
    cfg = make_config(tmp_path, source, "embed.enabled=false", "features.test_fraction=0.25", "train.epochs=30",
                      "train.launcher=in_process")
    ingest.run(spark, cfg, NIGHT_B)
    features.run(spark, cfg, NIGHT_B)
    models = train.run(spark, cfg, NIGHT_B)
    score.run(spark, cfg, NIGHT_B)
    night = Snapshot.load(spark, cfg, NIGHT_B)
    items = {r["key"]: r["idx"] for r in night.read(spark, cfg, tables.ID_MAP_ITEMS).collect()}
    horror = {items[str(i)] for i in range(41, 61)}
    user = night.read(spark, cfg, tables.ID_MAP_USERS).where(F.col("key") == "99").first()["idx"]
    train_seen = [r["item_idx"] for r in night.read(spark, cfg, tables.SILVER_INTERACTIONS)
                  .where((F.col("user_idx") == user) & (F.col("split") == "train")).collect()]
    assert not horror & set(train_seen), "the backtest split should hold out all of user 99's horror"
    backtest = _top10(models_root(cfg) / models[BACKTEST]["model_version"], user, train_seen)
    served = [items[r["item_key"]] for r in tables.read(spark, cfg, tables.RECOMMENDATIONS)
              .where((F.col("ds") == NIGHT_B) & (F.col("user_key") == "99") & (F.col("rank") <= 10)).collect()]
    share = {name: len(horror & set(top)) / 10 for name, top in (("backtest", backtest), ("served", served))}
    assert share["served"] >= 0.7 and share["backtest"] <= 0.3, share
