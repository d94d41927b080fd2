"""DDP training: 2 gloo ranks via TorchDistributor, identical weights, every row read every epoch."""
import json
from pathlib import Path

from lakerec.train import INPUTS_FILE, META_FILE, TrainInputs, latest_model_dir


def test_two_ranks_train_to_identical_weights(pipeline_run):
    cfg, results = pipeline_run
    model_dir = latest_model_dir(cfg)
    ranks = [json.loads((model_dir / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert results["train"]["world_size"] == 2


def test_ranks_read_disjoint_shards_covering_the_table_each_epoch(pipeline_run):
    cfg, results = pipeline_run
    model_dir = latest_model_dir(cfg)
    inputs = TrainInputs.load(model_dir / INPUTS_FILE)
    ranks = [json.loads((model_dir / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(cfg.train.epochs):
        per_rank = [r["history"][epoch]["rank_rows"] for r in ranks]
        assert all(n > 0 for n in per_rank)
        assert sum(per_rank) == inputs.total_rows == results["features"].training_examples


def test_model_records_its_inputs(pipeline_run):
    cfg, results = pipeline_run
    meta = json.loads((latest_model_dir(cfg) / META_FILE).read_text())
    assert meta["model_version"] == results["train"]["model_version"]
    assert set(meta["input_versions"]) >= {"features.training_examples", "silver.id_map_users", "silver.id_map_items"}
    assert meta["history"][-1]["loss"] < meta["history"][0]["loss"]
    assert Path(latest_model_dir(cfg) / "factors.npz").is_file()
