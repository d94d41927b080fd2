"""Ingest: every raw line lands in bronze or quarantine with a reason; re-ingest adds nothing."""
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from lakerec import ingest, tables

BAD_LINES = {
    ",5,4.0,964982703": "missing_user_key",
    "7,,4.0,964982703": "missing_item_key",
    "7,5,four,964982703": "unparseable_rating",
    "7,5,9.5,964982703": "rating_out_of_range",
    "7,5,-1,964982703": "rating_out_of_range",
    "7,5,4.0,yesterday": "bad_timestamp",
    "7,5,4.0": "wrong_field_count",
    "7,5,4.0,964982703,extra": "wrong_field_count",
}


def _valid_lines(path) -> list[str]:
    return path.read_text().splitlines()[1:]


def test_malformed_rows_are_quarantined_and_valid_rows_all_land(spark, source_copy, tmp_path):
    ratings = source_copy / "ratings.csv"
    valid = _valid_lines(ratings)
    duplicate = valid[0]
    # a rejected row sorts before a valid one with the same key: the valid one must still land; a
    # valid row with the same key and another rating sorts after it: the first one is kept
    rejected_twin, valid_twin = "77777,5,-1,964982703", "77777,5,4.0,964982703"
    conflicting_twin = "77777,5,4.5,964982703"
    with ratings.open("a") as fh:
        fh.write("\n".join([*BAD_LINES, duplicate, rejected_twin, conflicting_twin, valid_twin]) + "\n")
    valid.append(valid_twin)
    cfg = make_config(tmp_path, source_copy)

    result = ingest.run(spark, cfg, "2026-01-01")

    rejects = tables.read(spark, cfg, tables.QUARANTINE_REJECTS)
    assert rejects.where(F.col("raw_file").endswith("ratings.csv")).count() == len(BAD_LINES) + 3
    got = {(r["raw"], r["reason"]) for r in rejects.collect()}
    assert {(raw, reason) for raw, reason in BAD_LINES.items()} <= got
    assert (duplicate, "duplicate_row") in got
    assert (conflicting_twin, "duplicate_in_batch") in got
    assert (rejected_twin, "rating_out_of_range") in got
    assert result.rejects_by_reason["wrong_field_count"] == 2
    bronze = tables.read(spark, cfg, tables.BRONZE_INTERACTIONS)
    assert bronze.count() == len(valid) == result.interactions_inserted
    assert bronze.where(F.col("ingest_ds") == "2026-01-01").count() == len(valid)


@pytest.mark.slow
def test_reingest_adds_nothing_and_overlap_adds_only_new_events(spark, source_copy, tmp_path):
    cfg = make_config(tmp_path, source_copy)
    first = ingest.run(spark, cfg, "2026-01-01")
    again = ingest.run(spark, cfg, "2026-01-01")
    assert first.interactions_inserted > 0
    assert again.interactions_inserted == 0 and again.items_inserted == 0
    assert tables.read(spark, cfg, tables.BRONZE_INTERACTIONS).count() == first.interactions_inserted
    assert tables.read(spark, cfg, tables.QUARANTINE_REJECTS).count() == first.rejects

    with (source_copy / "ratings.csv").open("a") as fh:
        fh.write("9999,1,3.5,1600000000\n9999,2,4.0,1600000001\n")
    later = ingest.run(spark, cfg, "2026-01-02")
    assert later.interactions_inserted == 2
    assert tables.read(spark, cfg, tables.BRONZE_INTERACTIONS).count() == first.interactions_inserted + 2


def test_items_carry_genres_year_and_tags(spark, tiny_source, tmp_path):
    cfg = make_config(tmp_path, tiny_source)
    ingest.run(spark, cfg, "2026-01-01")
    items = tables.read(spark, cfg, tables.BRONZE_ITEMS)
    assert items.count() == len(_valid_lines(tiny_source / "movies.csv"))
    row = items.where(F.col("item_key") == "1").first()
    assert row["genres"] and row["year"] is not None and row["title"] in row["text"]
