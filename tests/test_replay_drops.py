"""bench/bench_replay.py's daily drops: a partition of the ratings on UTC day boundaries (pandas only, no Spark)."""
from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from lakerec.config import REPO_ROOT

_spec = importlib.util.spec_from_file_location("bench_replay", REPO_ROOT / "bench" / "bench_replay.py")
bench_replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_replay)

DAY = 86400
T0 = 1_700_006_400  # 2023-11-15 00:00:00 UTC
# Events per UTC day (day offset from T0, day 6 empty): 20 rows, the first 16 on days 0-3.
EVENTS_PER_DAY = {0: 5, 1: 4, 2: 3, 3: 4, 4: 1, 5: 2, 7: 1}
HEADER = "userId,movieId,rating,timestamp"


def _end_of(ds: str) -> int:
    """Epoch seconds of the last second of a UTC date."""
    day = dt.datetime.combine(dt.date.fromisoformat(ds), dt.time(), dt.timezone.utc)
    return int(day.timestamp()) + DAY - 1


def _write_source(root: Path, events_per_day: dict[int, int], newline: str = "\n") -> Path:
    """A tiny MovieLens-latest source whose rows are out of time order, with ties on one timestamp."""
    rows = []
    for day, count in events_per_day.items():
        for j in range(count):
            # Two events share each timestamp; the last one of a day sits on its final second.
            ts = T0 + day * DAY + (DAY - 1 if j == count - 1 else 3600 * (j // 2))
            rows.append(f"{10 + j},{100 + day * 10 + j},{[4.0, 3.5, 1.0][j % 3]},{ts}")
    root.mkdir()
    (root / "ratings.csv").write_bytes((newline.join([HEADER, *reversed(rows)]) + newline).encode())
    (root / "movies.csv").write_text("movieId,title,genres\n100,A (1999),Drama\n")
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n10,100,fun,1700006400\n")
    return root


def _drops(out: Path, ds_list: list[str]) -> list[pd.DataFrame]:
    return [pd.read_csv(out / ds / "ratings.csv", dtype=str) for ds in ds_list]


@pytest.mark.parametrize("nights", [1, 2, 3])
def test_drops_partition_the_rows_on_utc_day_boundaries(tmp_path, nights):
    source = _write_source(tmp_path / "source", EVENTS_PER_DAY)
    out = tmp_path / "drops"
    ds_list = bench_replay.write_drops(source, out, nights)

    assert len(ds_list) == nights + 1
    assert ds_list == sorted(set(ds_list))  # strictly increasing
    drops = _drops(out, ds_list)
    assert all(len(d) > 0 for d in drops)
    original = pd.read_csv(source / "ratings.csv", dtype=str)
    together = pd.concat(drops, ignore_index=True)
    key = ["userId", "movieId", "rating", "timestamp"]
    assert together.sort_values(key, ignore_index=True).equals(original.sort_values(key, ignore_index=True))
    previous_end = None
    for ds, drop in zip(ds_list, drops):
        ts = drop["timestamp"].astype(int)
        assert ts.max() <= _end_of(ds)
        assert bench_replay._ds_of(ts.max()) == ds
        if previous_end is not None:
            assert ts.min() > previous_end
        previous_end = _end_of(ds)


def test_initial_load_is_the_share_when_the_cut_falls_on_a_day_boundary(tmp_path):
    source = _write_source(tmp_path / "source", EVENTS_PER_DAY)
    ds_list = bench_replay.write_drops(source, tmp_path / "drops", nights=3, initial_share=0.8)
    drops = _drops(tmp_path / "drops", ds_list)
    assert len(drops[0]) == 16  # 0.8 * 20, the end of day 3
    assert ds_list[0] == "2023-11-18"
    assert [len(d) for d in drops[1:]] == [1, 2, 1]


def test_a_cut_inside_a_day_moves_to_the_nearest_midnight(tmp_path):
    source = _write_source(tmp_path / "source", EVENTS_PER_DAY)
    ds_list = bench_replay.write_drops(source, tmp_path / "drops", nights=1, initial_share=0.5)
    # 10 rows is inside day 1 (rows 5-8 end at 9): the nearest boundary is row 9, not row 12.
    assert [len(d) for d in _drops(tmp_path / "drops", ds_list)] == [9, 11]
    assert ds_list == ["2023-11-16", "2023-11-22"]


def test_too_few_days_give_fewer_nights(tmp_path, caplog):
    source = _write_source(tmp_path / "source", {0: 3, 1: 2, 2: 2})
    ds_list = bench_replay.write_drops(source, tmp_path / "drops", nights=5)
    assert ds_list == ["2023-11-15", "2023-11-16", "2023-11-17"]
    assert "nights instead of 5" in caplog.text


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_layout_and_format_follow_the_source(tmp_path, newline):
    source = _write_source(tmp_path / "source", EVENTS_PER_DAY, newline)
    out = tmp_path / "drops"
    ds_list = bench_replay.write_drops(source, out, nights=2)
    assert sorted(p.name for p in out.iterdir()) == ds_list
    for ds in ds_list:
        folder = out / ds
        assert sorted(p.name for p in folder.iterdir()) == ["movies.csv", "ratings.csv", "tags.csv"]
        assert (folder / "movies.csv").read_bytes() == (source / "movies.csv").read_bytes()
        assert (folder / "tags.csv").read_bytes() == (source / "tags.csv").read_bytes()
        text = (folder / "ratings.csv").read_bytes().decode()
        assert text.count(newline) == text.count("\n")  # every line ends as the source's do
        lines = text.splitlines()
        assert lines[0] == HEADER
        assert all(line.split(",")[2] in ("4.0", "3.5", "1.0") for line in lines[1:])
