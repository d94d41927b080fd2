"""lakerec.petastorm_bridge: petastorm 0.13.1 on pyarrow >= 16 and NumPy 2, scoped to petastorm's modules."""
import sys
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakerec import data, petastorm_bridge  # noqa: F401 (importing lakerec.data installs the bridge)


@pytest.fixture()
def files(tmp_path):
    """Two parquet files with a string column, nulls in one numeric column, and 2 + 1 row groups."""
    paths = []
    for n, (rows, group) in enumerate(((6, 3), (2, 2))):
        table = pa.table({
            "user_idx": pa.array(np.arange(rows, dtype=np.int32) + 10 * n),
            "title": pa.array([f"film {n}-{i}" for i in range(rows)]),
            "rating": pa.array([None if i == 0 else float(i) for i in range(rows)], type=pa.float64()),
        })
        path = tmp_path / f"part-{n}.parquet"
        pq.write_table(table, path, row_group_size=group)
        paths.append(str(path))
    return paths


def test_the_stack_is_the_one_the_bridge_is_for():
    """The pins this project runs: without them the bridge would be dead code, or not enough."""
    assert int(pa.__version__.split(".")[0]) >= 16 and int(np.__version__.split(".")[0]) >= 2
    assert not hasattr(pq, "ParquetDatasetPiece")


def test_the_legacy_names_exist_for_petastorm_only():
    """pyarrow, NumPy and sys.modules look as they did; petastorm's modules see the legacy names."""
    import petastorm.arrow_reader_worker
    import petastorm.reader
    import petastorm.utils

    assert "pyarrow.filesystem" not in sys.modules and "pyarrow.hdfs" not in sys.modules
    assert not hasattr(pa, "localfs") and not hasattr(pa, "LocalFileSystem")
    assert not hasattr(np, "unicode_") and not hasattr(np, "in1d")
    assert petastorm.reader.pq.ParquetDataset is petastorm_bridge.ParquetDataset
    assert petastorm.arrow_reader_worker.np.unicode_ is np.str_
    assert petastorm.utils.LocalFileSystem is petastorm_bridge.LocalFileSystem
    assert isinstance(data.MappedLocalFileSystem(), petastorm.utils.LocalFileSystem)


def test_petastorm_reads_strings_and_nulls_of_a_file_list(files):
    """Columns that take petastorm's pandas path (np.unicode_, nulls) come back whole and in order."""
    from petastorm import make_batch_reader

    urls = ["file://" + f for f in files]
    with make_batch_reader(urls, schema_fields=["user_idx", "title", "rating"], num_epochs=1,
                           shuffle_row_groups=False, workers_count=1) as reader:
        batches = list(reader)
    assert len(batches) == 3  # one per row group
    user_idx = np.concatenate([b.user_idx for b in batches])
    titles = np.concatenate([b.title for b in batches])
    ratings = np.concatenate([b.rating for b in batches])
    assert sorted(user_idx.tolist()) == [0, 1, 2, 3, 4, 5, 10, 11]
    by_user = dict(zip(user_idx.tolist(), titles.tolist()))
    assert by_user[4] == "film 0-4" and by_user[11] == "film 1-1"
    assert titles.dtype.kind == "U"
    assert int(np.isnan(ratings).sum()) == 2


def test_legacy_dataset_and_pieces_read_row_groups(files):
    dataset = petastorm_bridge.ParquetDataset(files, validate_schema=False, metadata_nthreads=10)
    assert dataset.partitions is None and dataset.metadata is None and dataset.common_metadata is None
    assert [p.path for p in dataset.pieces] == files
    assert dataset.pieces[0].get_metadata().num_row_groups == 2
    piece = petastorm_bridge.ParquetDatasetPiece(files[0], open_file_func=dataset.fs.open, row_group=1)
    assert piece.read(columns={"user_idx"}).column("user_idx").to_pylist() == [3, 4, 5]
    assert petastorm_bridge.ParquetDatasetPiece(files[1]).read().num_rows == 2


def test_what_is_not_bridged_fails_with_a_clear_error(files, tmp_path):
    """A directory, filters, hive partitions and hdfs:// are refused, not read some other way."""
    from petastorm.hdfs.namenode import HdfsConnector

    with pytest.raises(NotImplementedError, match="is a directory; pass its parquet files"):
        petastorm_bridge.ParquetDataset(str(tmp_path))
    with pytest.raises(NotImplementedError, match="filters"):
        petastorm_bridge.ParquetDataset(files, filters=[("user_idx", "=", 1)])
    with pytest.raises(NotImplementedError, match="hive-partitioned"):
        petastorm_bridge.ParquetDatasetPiece(files[0], partition_keys=[("ds", 0)])
    with pytest.raises(NotImplementedError, match="pyarrow.hdfs was removed"):
        HdfsConnector.hdfs_connect_namenode(urlparse("hdfs://namenode:8020/warehouse"))


def test_petastorm_predicates_run_on_numpy_2():
    """np.in1d (removed in NumPy 2.4) reaches petastorm's in_intersection through the bridge."""
    from petastorm.predicates import in_intersection

    assert in_intersection([2, 7], "genres").do_include({"genres": np.array([1, 2, 3])})
    assert not in_intersection([9], "genres").do_include({"genres": np.array([1, 2, 3])})
