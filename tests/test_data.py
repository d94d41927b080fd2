"""Petastorm data path: disjoint, complete shards, no short epochs (the 0.13.1 race), both file sources."""
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import make_config
from lakerec import features, ingest, tables, train
from lakerec.data import (
    EndOfDataSafeThreadPool,
    MappedLocalFileSystem,
    PromptVentilator,
    ZeroCopyBatchBuffer,
    active_files,
    count_rows,
    install_petastorm_patches,
    iterate_batches,
    spark_converter,
)
from lakerec.model_store import BACKTEST
from lakerec.snapshot import Snapshot

COLUMNS = ["user_idx", "item_idx", "label"]


@pytest.fixture(scope="module")
def example_cfg(spark, tiny_source, tmp_path_factory):
    """A warehouse with features.training_examples written by the features job in 6 files."""
    root = tmp_path_factory.mktemp("data")
    cfg = make_config(root, tiny_source, "features.training_files=6", f"train.petastorm_cache_dir={root}/cache")
    ingest.run(spark, cfg, "2026-01-01")
    features.run(spark, cfg, "2026-01-01")
    return cfg


@pytest.fixture(scope="module")
def examples(spark, example_cfg):
    version = tables.version(spark, example_cfg, tables.TRAINING_EXAMPLES)
    files = active_files(spark, tables.TRAINING_EXAMPLES.path(example_cfg), version)
    rows = {(r["user_idx"], r["item_idx"]) for r in tables.read(spark, example_cfg, tables.TRAINING_EXAMPLES).collect()}
    return files, rows


def _read(files, **kwargs) -> list[tuple[int, int]]:
    pairs = []
    for batch in iterate_batches(files, 64, ["user_idx", "item_idx"], **kwargs):
        pairs += list(zip(batch["user_idx"].tolist(), batch["item_idx"].tolist()))
    return pairs


def _all_rows(files) -> Counter:
    rows = Counter()
    for batch in iterate_batches(files, 100, COLUMNS, workers=1):
        rows.update(zip(*(batch[c].tolist() for c in COLUMNS)))
    return rows


def test_active_files_match_the_table(examples):
    files, rows = examples
    assert count_rows(files) == len(rows)


def test_active_files_leave_out_files_an_overwrite_removed(spark, tmp_path):
    """The folder keeps the files of older versions; only the log says which are live."""
    path = str(tmp_path / "table")
    spark.range(100).repartition(3).write.format("delta").save(path)
    spark.range(10).repartition(2).write.format("delta").mode("overwrite").save(path)
    assert len(list(Path(path).glob("*.parquet"))) == 5
    assert count_rows(active_files(spark, path, 0)) == 100
    assert count_rows(active_files(spark, path, 1)) == 10
    assert set(active_files(spark, path, 0)).isdisjoint(active_files(spark, path, 1))


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_read_disjoint_shards_that_cover_the_table(examples, epoch):
    files, rows = examples
    shard0 = _read(files, rank=0, world_size=2, epoch=epoch)
    shard1 = _read(files, rank=1, world_size=2, epoch=epoch)
    assert shard0 and shard1
    assert not set(shard0) & set(shard1)
    assert len(shard0) + len(shard1) == len(rows)
    assert set(shard0) | set(shard1) == rows


class _Echo:
    """A pool worker that publishes what it is given."""

    def __init__(self, worker_id, publish_func, args):
        self.worker_id, self.publish_func = worker_id, publish_func

    def process(self, value):
        self.publish_func(value)

    def shutdown(self):
        pass


class _LateVentilator:
    """Ventilates its one item in the gap petastorm's pool leaves: as it is asked whether it is done."""

    def __init__(self):
        self.pool = None
        self.done = False

    def start(self):
        pass

    def completed(self):
        if not self.done:
            self.done = True
            self.pool.ventilate(42)
        return True

    def processed_item(self):
        pass

    def stop(self):
        pass


def _results_with_late_ventilation(pool_class) -> list[int]:
    from petastorm.workers_pool import EmptyResultError

    pool, ventilator = pool_class(1), _LateVentilator()
    ventilator.pool = pool
    pool.start(_Echo, ventilator=ventilator)
    results = []
    try:
        while True:
            results.append(pool.get_results())
    except EmptyResultError:
        return results
    finally:
        pool.stop()
        pool.join()


def test_the_end_of_data_check_reads_the_ventilator_before_the_counters():
    """The 0.13.1 race, made deterministic: an item ventilated between the pool's two end-of-data reads.

    petastorm's pool reads its counters (nothing ventilated yet: all done), then the ventilator's
    flag (done by then): it ends the epoch and the item is lost. The patched pool reads the flag first.
    """
    from petastorm.workers_pool.thread_pool import ThreadPool

    assert _results_with_late_ventilation(ThreadPool) == []
    assert _results_with_late_ventilation(EndOfDataSafeThreadPool) == [42]


@pytest.mark.slow
def test_fresh_readers_never_return_a_short_epoch(examples):
    """Soak: petastorm 0.13.1's thread pool ended about 1 fresh epoch in 25 with 0 rows here."""
    files, rows = examples
    counts = [len(_read(files, epoch=e, workers=3)) for e in range(40)]
    assert counts == [len(rows)] * 40


def test_readers_poll_for_queue_room_every_millisecond(examples):
    """The trainer's readers get the prompt ventilator (petastorm's own sleeps 10 ms when its queue is full)."""
    from petastorm import make_batch_reader

    files, rows = examples
    install_petastorm_patches()
    with make_batch_reader([f if f.startswith("file:") else "file://" + f for f in files], num_epochs=1,
                           reader_pool_type="thread", workers_count=2) as reader:
        assert isinstance(reader.ventilator, PromptVentilator)
        assert reader.ventilator._ventilation_interval == 0.001
        assert sum(len(batch.user_idx) for batch in reader) == len(rows)


def test_local_files_are_read_through_memory_maps(examples, monkeypatch):
    """Row groups of local files are read from memory maps, not Python file objects that need the GIL."""
    import pyarrow as pa

    files, rows = examples
    opened = []
    open_mapped = MappedLocalFileSystem.open

    def recording_open(self, path, mode="rb"):
        opened.append(open_mapped(self, path, mode))
        return opened[-1]

    monkeypatch.setattr(MappedLocalFileSystem, "open", recording_open)
    assert len(_read(files, workers=2)) == len(rows)
    assert opened and all(isinstance(f, pa.MemoryMappedFile) for f in opened)


def test_relative_paths_are_read_as_local_files(examples, monkeypatch):
    import os

    files, rows = examples
    paths = [f.removeprefix("file:") for f in files]
    monkeypatch.chdir(os.path.dirname(paths[0]))
    assert sorted(_read([os.path.basename(p) for p in paths])) == sorted(_read(files))


def test_numeric_row_groups_become_numpy_without_pandas_and_others_keep_petastorms_conversion():
    import numpy as np
    import pyarrow as pa
    from petastorm import arrow_reader_worker
    from petastorm.unischema import Unischema

    from lakerec import data

    install_petastorm_patches()
    assert arrow_reader_worker.convert_arrow_table_to_numpy_dict is data._table_to_numpy_dict
    numeric = pa.table({"user_idx": pa.array([3, 1, 2], pa.int32()), "label": pa.array([1.0, 0.0, 1.0], pa.float32())})
    arrays = data._table_to_numpy_dict(numeric, Unischema("t", []))
    expected = data._table_to_numpy_dict_via_pandas(numeric, Unischema("t", []))
    assert {k: (v.dtype, v.tolist()) for k, v in arrays.items()} == {k: (v.dtype, v.tolist()) for k, v in expected.items()}
    assert np.shares_memory(arrays["user_idx"], np.frombuffer(numeric.column("user_idx").chunk(0).buffers()[1], np.int32))
    with_null = pa.table({"user_idx": pa.array([3, None], pa.int32())})
    converted = data._table_to_numpy_dict(with_null, Unischema("t", []))["user_idx"]
    assert converted.dtype == np.float64 and converted[0] == 3 and np.isnan(converted[1])


def test_epochs_reshuffle_row_group_order(examples):
    files, _ = examples
    orders = {tuple(_read(files, epoch=e, workers=1)[:5]) for e in range(6)}
    assert len(orders) > 1


def test_spark_converter_yields_the_same_rows_as_the_delta_log_files(spark, example_cfg, examples, tmp_path):
    files, _ = examples
    version = tables.version(spark, example_cfg, tables.TRAINING_EXAMPLES)
    converter = spark_converter(spark, tables.TRAINING_EXAMPLES.path(example_cfg), version, COLUMNS, str(tmp_path))
    try:
        assert all(f.startswith(f"file://{tmp_path}") for f in converter.file_urls)
        assert set(converter.file_urls).isdisjoint(files)
        from_log = _all_rows(files)
        assert sum(from_log.values()) == count_rows(files)
        assert _all_rows(converter.file_urls) == from_log
    finally:
        converter.delete()


def test_train_job_pins_converter_files_with_data_path_spark_converter(spark, example_cfg, examples):
    files, rows = examples
    cfg = make_config(Path(example_cfg.warehouse).parent, Path(example_cfg.source.path),
                      "train.data_path=spark_converter", f"train.petastorm_cache_dir={example_cfg.train.petastorm_cache_dir}")
    inputs = train.prepare(spark, cfg, "2026-01-01", BACKTEST, Snapshot.load(spark, cfg, "2026-01-01"))
    assert all(f.startswith("file://" + cfg.train.petastorm_cache_dir) for f in inputs.files)
    assert inputs.total_rows == len(rows)
    assert _all_rows(inputs.files) == _all_rows(files)


def test_batches_are_views_of_row_groups_except_across_boundaries():
    buffer = ZeroCopyBatchBuffer(batch_size=4)
    first, second = torch.arange(6), torch.arange(6, 9)
    buffer.add_many([first])
    buffer.add_many([second])
    buffer.finish()
    batches = []
    while buffer.can_retrieve():
        batches.append(buffer.retrieve()[0])
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert batches[0].data_ptr() == first.data_ptr()
    assert buffer.size == 0


def test_row_groups_come_from_each_footer_once_and_match_petastorms_split(tmp_path):
    """Each fresh reader (one per epoch) splits row groups without re-reading footers."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import _split_piece

    from lakerec import data

    paths = []
    for n, rows_per_group in ((900, 300), (500, 100)):
        path = tmp_path / f"part-{n}.parquet"
        pq.write_table(pa.table({"user_idx": np.arange(n, dtype=np.int32)}), path, row_group_size=rows_per_group)
        paths.append(str(path))
    dataset = data.ParquetDataset(paths)  # the legacy dataset petastorm is given (lakerec.petastorm_bridge)
    expected = [(p.path, p.row_group) for piece in dataset.pieces for p in _split_piece(piece, dataset.fs.open)]
    assert [(p.path, p.row_group) for p in data._split_row_groups_from_cached_footers(dataset)] == expected
    assert len(expected) == 3 + 5
    assert {path: data._row_groups_per_file[path] for path in paths} == {paths[0]: 3, paths[1]: 5}
    for path in paths:  # the next epoch's reader needs no footer: the files are not even opened
        Path(path).unlink()
    assert [(p.path, p.row_group) for p in data._split_row_groups_from_cached_footers(dataset)] == expected


def test_footers_and_columns_are_read_from_urls_of_other_filesystems(examples):
    """Files on object stores (s3a://, gs://, ...) are opened through fsspec, here its memory filesystem."""
    import fsspec

    from lakerec.data import read_columns

    files, rows = examples
    memory = fsspec.filesystem("memory")
    urls = []
    for i, f in enumerate(files):
        memory.pipe(f"/lakerec-test/part-{i}.parquet", Path(f.removeprefix("file:")).read_bytes())
        urls.append(f"memory://lakerec-test/part-{i}.parquet")
    assert count_rows(urls) == count_rows(files) == len(rows)
    got = read_columns(urls, ["user_idx", "item_idx"])
    assert set(zip(got["user_idx"].tolist(), got["item_idx"].tolist())) == rows
