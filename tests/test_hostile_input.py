"""Hostile input: every malformed row is quarantined with its reason, no valid row is lost or mis-mapped,
and a drop that must not reach bronze stops the night before bronze is written."""
import dataclasses
import shutil

import pytest
from pyspark.sql import functions as F

from conftest import make_config
from lakerec import ingest, tables
from lakerec.config import ConfigError
from lakerec.snapshot import end_of_day

pytestmark = pytest.mark.faults

DS, NEXT_DS = "2026-01-01", "2026-01-02"
END = end_of_day(DS)
LONG = 100_000
MAPPING = ("source.interactions={file: '*.csv', user: user_id, item: item_id, rating: rating, weight: weight, "
           "timestamp: ts}")
COLUMNS_A = ("user_id", "item_id", "rating", "weight", "ts")
COLUMNS_B = ("ts", "weight", "item_id", "user_id", "rating")  # the second file: same columns, another order
N_VALID, N_IN_B = 300, 100

# Malformed rows of the first file, each written as its bytes, by the reason it must be quarantined with.
MALFORMED = {
    "wrong_field_count": [b"u1,i1,4.0,1", b"u1,i1,4.0,1,1600000000,extra"],
    "field_too_long": [b"x" * LONG + b",i1,4.0,1,1600000000", b"u1," + b"y" * LONG + b",4.0,1,1600000000"],
    "bad_encoding": [b"u1,i\xff\xfe1,4.0,1,1600000000", b"\xe9u2,i2,4.0,1,1600000000"],  # not UTF-8; latin-1
    "non_finite_number": [b"u1,i1,NaN,1,1600000000", b"u1,i1,Infinity,1,1600000000", b"u1,i1,4.0,inf,1600000000",
                          b"u1,i1,4.0,-Infinity,1600000000"],
    "future_timestamp": [b"u1,i1,4.0,1,4102444800", f"u1,i1,4.0,1,{END}".encode(), b"u1,i1,4.0,1,4102444800000"],
    "timestamp_in_milliseconds": [b"u1,i1,4.0,1,1600000000000", b"u1,i1,4.0,1,1700000000123"],
    "missing_weight": [b"u1,i1,4.0,,1600000000", b"u1,i1,4.0,  ,1600000000"],
    "bad_weight": [b"u1,i1,4.0,-1,1600000000", b"u1,i1,4.0,lots,1600000000"],
    "missing_user_key": [b",i1,4.0,1,1600000000"],
    "unparseable_rating": [b"u1,i1,four,1,1600000000"],
    "rating_out_of_range": [b"u1,i1,9.5,1,1600000000"],
    "bad_timestamp": [b"u1,i1,4.0,1,yesterday"],
}


def _valid_rows() -> list[dict[str, str]]:
    rows = [{"user_id": f"u{i % 37}", "item_id": f"i{i % 53}", "rating": str(0.5 + i % 10 * 0.5),
             "weight": str(i % 7), "ts": str(1_600_000_000 + i)} for i in range(N_VALID - 1)]
    last_second = {"user_id": "u0", "item_id": "i0", "rating": "5.0", "weight": "1", "ts": str(END - 1)}
    return rows + [last_second]  # still ds's


def _line(row: dict[str, str], columns: tuple[str, ...]) -> bytes:
    return ",".join(row[c] for c in columns).encode()


def _write_hostile(folder) -> list[dict[str, str]]:
    """CSV files, the second with its columns in another order, the third empty; returns the valid rows."""
    folder.mkdir()
    valid = _valid_rows()
    in_a, in_b = valid[:-N_IN_B], valid[-N_IN_B:]
    duplicates = [_line(in_a[3], COLUMNS_A), _line(in_a[4], COLUMNS_A)]  # exact copies: the first copy lands
    conflicting = _line({**in_a[0], "rating": "1.0"}, COLUMNS_B)  # in_a[0]'s key, another rating, later file
    lines_a = [_line(r, COLUMNS_A) for r in in_a] + [b for bad in MALFORMED.values() for b in bad] + duplicates
    (folder / "a_plays.csv").write_bytes(b"\n".join([",".join(COLUMNS_A).encode(), *lines_a]) + b"\n")
    lines_b = [_line(r, COLUMNS_B) for r in in_b] + [conflicting]
    (folder / "b_plays.csv").write_bytes(b"\n".join([",".join(COLUMNS_B).encode(), *lines_b]) + b"\n")
    (folder / "c_plays.csv").write_bytes(b"")  # an empty file among them holds no rows
    return valid


@pytest.fixture(scope="module")
def hostile(spark, tmp_path_factory):
    """The hostile drop ingested once: (cfg, result, valid rows)."""
    root = tmp_path_factory.mktemp("hostile")
    valid = _write_hostile(root / "drop")
    cfg = make_config(root, root / "drop", "source.format=generic", "source.name=hostile", MAPPING)
    return cfg, ingest.run(spark, cfg, DS), valid


def test_each_malformed_kind_is_quarantined_with_its_reason(spark, hostile):
    cfg, result, _ = hostile
    expected = {reason: len(rows) for reason, rows in MALFORMED.items()}
    expected.update(duplicate_row=2, duplicate_in_batch=1)
    rejects = tables.read(spark, cfg, tables.QUARANTINE_REJECTS).where(F.col("ds") == DS)
    assert {r["reason"]: r["count"] for r in rejects.groupBy("reason").count().collect()} == expected
    assert result.rejects_by_reason == expected
    longest = rejects.where(F.col("reason") == "field_too_long").agg(F.max(F.length("raw"))).first()[0]
    assert longest == cfg.source.max_field_chars + len(ingest.TRUNCATED)  # a 100 kB field cannot bloat quarantine


def test_every_valid_row_lands_with_its_values_and_no_malformed_row_does(spark, hostile):
    cfg, result, valid = hostile
    bronze = {(r["user_key"], r["item_key"], r["ts"]): (r["rating"], r["weight"])
              for r in tables.read(spark, cfg, tables.BRONZE_INTERACTIONS).collect()}
    # the second file's rows too, although its columns are in another order than the first file's
    assert bronze == {(r["user_id"], r["item_id"], int(r["ts"])): (float(r["rating"]), float(r["weight"]))
                      for r in valid}
    rows_read = N_VALID + sum(map(len, MALFORMED.values())) + 3
    assert (result.rows_read, result.interactions_inserted, result.already_present) == (rows_read, N_VALID, 0)


def _write_plays(folder, *lines: str) -> None:
    folder.mkdir(parents=True)
    (folder / "plays.csv").write_text("\n".join(["user,item,rating,ts", *lines]) + "\n")


def _generic(root, source, *overrides: str):
    return make_config(root, source, "source.format=generic", "source.name=plays",
                       "source.interactions={file: plays.csv, user: user, item: item, rating: rating, timestamp: ts}",
                       *overrides)


def _nothing_written(spark, cfg) -> bool:
    return not tables.exists(spark, cfg, tables.BRONZE_INTERACTIONS) and not tables.exists(
        spark, cfg, tables.QUARANTINE_REJECTS)


@pytest.mark.parametrize("case, message", [
    ("header only", "holds no interaction rows"),
    ("empty file", "config key 'source.interactions.file': every file it names is empty"),
    ("pattern matches nothing", "config key 'source.interactions.file'"),
    ("no drop folder", "config key 'source.path': no drop for ds="),
    ("preset file missing", r"lacks \['movies.csv', 'tags.csv'\]"),
])
def test_a_missing_or_empty_drop_fails_naming_the_cause_and_writes_nothing(spark, tmp_path, case, message):
    drop = tmp_path / "drops" / DS
    if case == "header only":
        _write_plays(drop)
        cfg = _generic(tmp_path, drop)
    elif case == "empty file":
        drop.mkdir(parents=True)
        (drop / "plays.csv").write_bytes(b"")
        cfg = _generic(tmp_path, drop)
    elif case == "pattern matches nothing":
        _write_plays(drop, "a,x,4.0,100")
        cfg = _generic(tmp_path, drop, "source.interactions.file='missing-*.csv'")
    elif case == "no drop folder":
        cfg = _generic(tmp_path, tmp_path / "drops" / "{ds}")
    else:
        drop.mkdir(parents=True)
        (drop / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,100\n")
        cfg = make_config(tmp_path, drop)
    with pytest.raises(ingest.DropRejected, match=message):
        ingest.run(spark, cfg, DS)
    assert _nothing_written(spark, cfg)


def test_a_drop_mostly_rejected_keeps_its_rejects_and_fails_before_bronze(spark, tmp_path):
    _write_plays(tmp_path / "drop", "a,x,4.0,100", "b,y,4.0,101", ",z,4.0,102", "c,,4.0,103", "d,w,4.0,later")
    cfg = _generic(tmp_path, tmp_path / "drop")
    with pytest.raises(ingest.DropRejected, match=r"config key 'source.max_reject_share': 3 of 5 interaction rows"):
        ingest.run(spark, cfg, DS)
    assert not tables.exists(spark, cfg, tables.BRONZE_INTERACTIONS)
    assert tables.read(spark, cfg, tables.QUARANTINE_REJECTS).where(F.col("ds") == DS).count() == 3


@pytest.fixture(scope="module")
def first_night(spark, tmp_path_factory):
    """Two nights' drops, the second re-delivering the first's rows (one with another rating); the first ingested."""
    root = tmp_path_factory.mktemp("redelivery")
    _write_plays(root / "drops" / DS, "a,x,3.0,100", "b,y,4.0,101")
    _write_plays(root / "drops" / NEXT_DS, "a,x,5.0,100", "b,y,4.0,101", "c,z,2.0,102", "d,,1.0,103")
    ingest.run(spark, _generic(root, root / "drops" / "{ds}"), DS)
    return root


@pytest.mark.parametrize("policy, kept", [("first", 3.0), ("latest", 5.0)])
def test_a_redelivered_key_with_another_value_is_counted_and_follows_the_policy(spark, first_night, tmp_path,
                                                                               policy, kept):
    shutil.copytree(first_night / "warehouse", tmp_path / "warehouse")
    cfg = _generic(tmp_path, first_night / "drops" / "{ds}", f"source.redelivery={policy}")
    result = ingest.run(spark, cfg, NEXT_DS)

    assert (result.rows_read, result.interactions_inserted, result.already_present, result.redelivered_changed,
            result.interactions_quarantined) == (4, 1, 2, 1, 1)
    bronze = {r["user_key"]: r for r in tables.read(spark, cfg, tables.BRONZE_INTERACTIONS).collect()}
    assert sorted(bronze) == ["a", "b", "c"]
    assert bronze["a"]["rating"] == kept and bronze["a"]["ingest_ds"] == DS
    quality = {r["metric"]: r["value"] for r in tables.read(spark, cfg, tables.DATA_QUALITY)
               .where((F.col("ds") == NEXT_DS) & (F.col("stage") == "ingest")).collect()}
    assert (quality["already_present"], quality["redelivered_changed"]) == (2, 1)
    assert quality["rows_read"] == (quality["interactions_inserted"] + quality["already_present"]
                                    + quality["interactions_quarantined"])


def test_counts_that_do_not_add_up_fail_the_run(spark, tmp_path, monkeypatch):
    _write_plays(tmp_path / "drop", "a,x,3.0,100", "b,y,4.0,101")
    cfg = _generic(tmp_path, tmp_path / "drop")
    monkeypatch.setattr(ingest, "_already_present", lambda *args: (1, 0))  # one row counted twice
    with pytest.raises(RuntimeError, match=r"2 rows read, but 2 inserted \+ 1 already present \+ 0 quarantined = 3"):
        ingest.run(spark, cfg, DS)


@pytest.mark.parametrize("name", ["x' OR '1'='1", "", "-lead", "a b", "a/b", "a`b"])
def test_a_source_name_that_could_reach_a_predicate_is_refused_by_config(tmp_path, name):
    with pytest.raises(ConfigError, match="'source.name'"):
        make_config(tmp_path, tmp_path, f"source.name={name!r}")


def test_the_source_name_is_escaped_in_the_quarantine_predicate(spark, tmp_path):
    """Past the config check (a caller building a Config in code), a quote still cannot widen the replaceWhere."""
    _write_plays(tmp_path / "drop", "a,x,3.0,100", "b,y,4.0,101", "c,,1.0,102")
    cfg = _generic(tmp_path, tmp_path / "drop")
    other = spark.createDataFrame([(DS, "other", "f.csv", "raw", "missing_item_key")], tables.QUARANTINE_REJECTS.schema)
    tables.replace_where(other, cfg, tables.QUARANTINE_REJECTS, tables.equals(ds=DS, source="other"))
    hostile_name = "x' OR source <> 'x"
    ingest.run(spark, dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, name=hostile_name)), DS)
    sources = {r["source"]: r["count"] for r in tables.read(spark, cfg, tables.QUARANTINE_REJECTS).groupBy("source")
               .count().collect()}
    assert sources == {hostile_name: 1, "other": 1}
