"""Source formats: MovieLens presets and generic CSV / Parquet / JSON with a column mapping."""
import pandas as pd
import pytest
from pyspark.sql import functions as F

from conftest import SHARED_DATA, make_config, requires_shared_data
from lakerec import features, ingest, tables

GENERIC_MAPPING = (
    "source.interactions={file: plays.csv, user: listener, item: track, weight: plays, "
    "timestamp: played_at, timestamp_format: 'yyyy-MM-dd HH:mm:ss'}"
)


@requires_shared_data("ml-100k")
def test_movielens_100k_preset_reads_every_row_and_genre_flags(spark, tmp_path):
    cfg = make_config(tmp_path, SHARED_DATA / "ml-100k", "source.format=movielens_100k", "source.name=ml-100k",
                      "source.rating_min=1", "source.rating_max=5")
    result = ingest.run(spark, cfg, "2026-01-01")
    assert (result.rows_read, result.interactions_inserted, result.rejects) == (100_000, 100_000, 0)
    items = tables.read(spark, cfg, tables.BRONZE_ITEMS)
    assert items.count() == 1682
    toy_story = items.where(F.col("item_key") == "1").first()
    assert toy_story["title"] == "Toy Story (1995)" and toy_story["year"] == 1995
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]


def test_movielens_1m_preset_reads_double_colon_latin1_files(spark, tmp_path):
    src = tmp_path / "ml-1m"
    src.mkdir()
    (src / "ratings.dat").write_text("1::10::5::978300760\n1::11::3::978302109\n2::10::4::978301968\n2::11::x::1\n")
    (src / "movies.dat").write_bytes("10::Amélie (2001)::Comedy|Romance\n11::Heat (1995)::Action|Crime|Thriller\n".encode("latin-1"))
    cfg = make_config(tmp_path, src, "source.format=movielens_1m", "source.rating_min=1", "source.rating_max=5")
    result = ingest.run(spark, cfg, "2026-01-01")
    assert result.interactions_inserted == 3 and result.rejects_by_reason == {"unparseable_rating": 1}
    titles = {r["item_key"]: r["title"] for r in tables.read(spark, cfg, tables.BRONZE_ITEMS).collect()}
    assert titles["10"] == "Amélie (2001)"


def _write_generic(src):
    src.mkdir()
    (src / "plays.csv").write_text(
        "listener,track,plays,played_at\n"
        "alice,song-1,3,2024-01-01 10:00:00\n"
        "alice,song-2,1,2024-01-02 10:00:00\n"
        "bob,song-1,7,2024-01-03 10:00:00\n"
        "bob,song-3,-2,2024-01-03 11:00:00\n"
        "carol,song-2,2,not a date\n"
        '"dave","song-3","5","2024-02-01 08:00:00"\n'
    )
    (src / "tracks.json").write_text(
        '{"id": "song-1", "name": "First", "style": "rock;pop", "about": "loud"}\n'
        '{"id": "song-2", "name": "Second", "style": "jazz", "about": null}\n'
        '{"id": null, "name": "Orphan", "style": "", "about": ""}\n'
        '{"id": "song-3", "name": "Third", "style": "folk", "about": "quiet"}\n'
        '{"id": "song-4", "name": "Cut off\n'
    )


@pytest.mark.slow
def test_generic_csv_with_mapping_and_json_items(spark, tmp_path):
    src = tmp_path / "music"
    _write_generic(src)
    cfg = make_config(
        tmp_path, src, "source.format=generic", "source.name=music", GENERIC_MAPPING,
        "source.items={file: tracks.json, type: json, item: id, title: name, genres: style, genre_separator: ';', description: about}",
    )
    result = ingest.run(spark, cfg, "2026-01-01")
    assert result.interactions_inserted == 4
    assert result.rejects_by_reason == {"bad_weight": 1, "bad_timestamp": 1, "missing_item_key": 1,
                                        "malformed_record": 1}
    bronze = {(r["user_key"], r["item_key"]): r for r in tables.read(spark, cfg, tables.BRONZE_INTERACTIONS).collect()}
    assert bronze[("bob", "song-1")]["weight"] == 7.0 and bronze[("bob", "song-1")]["rating"] is None
    assert bronze[("dave", "song-3")]["ts"] == 1706774400
    items = {r["item_key"]: r for r in tables.read(spark, cfg, tables.BRONZE_ITEMS).collect()}
    assert items["song-1"]["genres"] == ["rock", "pop"] and "loud" in items["song-1"]["text"]
    silver = features.run(spark, cfg, "2026-01-01")
    assert silver.users == 3 and silver.items >= 3


def test_generic_parquet_without_timestamps_or_items(spark, tmp_path):
    src = tmp_path / "clicks"
    src.mkdir()
    pd.DataFrame({"u": [1, 1, 2, 2, 3], "i": [10, 11, 10, 12, None], "r": [4.0, 2.0, 5.0, 3.0, 1.0]}).to_parquet(src / "part-0.parquet")
    cfg = make_config(tmp_path, src, "source.format=generic", "source.rating_min=1",
                      "source.interactions={file: '*.parquet', type: parquet, user: u, item: i, rating: r}")
    result = ingest.run(spark, cfg, "2026-01-01")
    assert result.interactions_inserted == 4 and result.rejects_by_reason == {"missing_item_key": 1}
    raw = tables.read(spark, cfg, tables.QUARANTINE_REJECTS).first()["raw"]
    assert '"u":3' in raw
    assert ingest.run(spark, cfg, "2026-01-01").interactions_inserted == 0
