"""Checkpoints and resume, the torchrun launcher, and reproducible weights, on CPU (gloo).

The workers need no Spark: these tests write training examples as parquet with pyarrow and hand
the workers an ``inputs.json`` the way the driver would. Crashes are injected deterministically
(``LAKEREC_FAULT``: a rank kills itself right after a given epoch), never timed with sleeps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakerec.config import TrainConfig, load_config
from lakerec.data import count_rows
from lakerec.faults import FAULT_ENV
from lakerec.model_store import (
    INPUTS_FILE, META_FILE, MODEL_FILE, TrainInputs, checkpoint_paths, load_model,
)
from lakerec.models import FactorModel
from lakerec.train import launch
from lakerec.trainer import train_worker

pytestmark = pytest.mark.slow  # real torchrun launches and 2-rank training runs

N_USERS, N_ITEMS = 3000, 800
EPOCHS = 4
CRASH_AFTER = 1  # the epoch after which an injected crash kills a rank
TRAIN = {"model": "mf", "dim": 16, "epochs": EPOCHS, "batch_size": 256, "reader_workers": 1, "seed": 7}


@pytest.fixture(scope="module")
def example_files(tmp_path_factory) -> list[str]:
    """Four parquet files of (user_idx, item_idx, label) with several row groups each."""
    folder = tmp_path_factory.mktemp("examples")
    rng = np.random.default_rng(11)
    files = []
    for part in range(4):
        n = 12_000 + 500 * part  # uneven files: ranks get uneven shards
        users = np.sort(rng.integers(0, N_USERS, n)).astype(np.int32)
        items = rng.integers(0, N_ITEMS, n).astype(np.int32)
        table = pa.table({"user_idx": users, "item_idx": items, "label": np.ones(n, np.float32)})
        path = folder / f"part-{part:05d}.parquet"
        pq.write_table(table, path, row_group_size=4_000)
        files.append(str(path))
    return files


def write_inputs(model_dir: Path, files: list[str], **train) -> Path:
    """An inputs.json as the driver writes it, for a model trained under ``model_dir``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    inputs = TrainInputs(
        model_version=model_dir.name,
        model_dir=str(model_dir),
        files=files,
        table_version=3,
        total_rows=count_rows(files),
        n_users=N_USERS,
        n_items=N_ITEMS,
        input_versions={"features.training_examples": 3},
        train=asdict(TrainConfig(**{**TRAIN, **train})),
    )
    inputs.save(model_dir / INPUTS_FILE)
    return model_dir / INPUTS_FILE


def torchrun(inputs_path: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "lakerec.train", "--inputs", str(inputs_path)]


def meta(model_dir: Path) -> dict:
    return json.loads((model_dir / META_FILE).read_text())


@pytest.fixture(scope="module")
def reference_run(example_files, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run started through ``launch`` with launcher=torchrun."""
    root = tmp_path_factory.mktemp("reference")
    cfg = load_config("local", overrides=[f"models_dir={root}", "train.launcher=torchrun", "train.num_processes=2"])
    inputs_path = write_inputs(root / "mf-reference", example_files)
    launch(cfg, [inputs_path])
    return root / "mf-reference"


def test_torchrun_launcher_trains_two_gloo_ranks_on_disjoint_complete_shards(reference_run, example_files):
    m = meta(reference_run)
    total = count_rows(example_files)
    assert m["world_size"] == 2 and m["device"] == "cpu"
    assert m["rank_weights_sha256"][0] == m["rank_weights_sha256"][1]
    for epoch in m["history"]:
        assert all(n > 0 for n in epoch["rank_rows"])
        assert sum(epoch["rank_rows"]) == epoch["rows"] == total
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    assert m["restarts"] > 0 or m["resumed_from_epoch"] is None  # a fresh run resumes only after a restart
    assert m["mlflow_run_id"] is None  # tracking is off by default
    assert (reference_run.parent / "LATEST").read_text() == reference_run.name


def test_a_checkpoint_per_epoch_holds_what_resume_needs(reference_run):
    import torch

    paths = checkpoint_paths(reference_run)
    assert [p.name for p in paths] == [f"epoch-{e:04d}.pt" for e in (EPOCHS - 2, EPOCHS - 1)]
    state = torch.load(paths[-1], weights_only=True)
    assert state["epoch"] == EPOCHS - 1
    assert {"model", "optimizer", "negatives", "history", "best", "train", "table_version"} <= set(state)
    assert len(state["negatives"]) == 2  # one sampler state per rank
    assert state["best"]["loss"] == min(h["loss"] for h in state["history"])
    assert state["train"]["seed"] == TRAIN["seed"]


def test_a_run_crashed_after_an_epoch_resumes_to_the_uninterrupted_result(reference_run, example_files, tmp_path):
    """Rank 0 dies right after epoch 1's checkpoint; the rerun resumes at epoch 2: same weights and losses.

    Tolerance: none. On CPU with one reader thread per rank the batch order, the negative samples
    and gloo's reductions are deterministic, so resumed weights are bit-identical.
    """
    model_dir = tmp_path / "mf-crashed"
    inputs_path = write_inputs(model_dir, example_files)
    crashed = subprocess.run(torchrun(inputs_path), env={**os.environ, FAULT_ENV: f"train.epoch_end:{CRASH_AFTER}@0"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert crashed.returncode != 0
    assert not (model_dir / META_FILE).exists()
    assert checkpoint_paths(model_dir)[-1].name == f"epoch-{CRASH_AFTER:04d}.pt"

    # The rerun goes through launch (torchrun, restarts allowed), as the train job would do it.
    launch(load_config("local", overrides=[f"models_dir={tmp_path}", "train.launcher=torchrun"]), [inputs_path])

    resumed, reference = meta(model_dir), meta(reference_run)
    assert resumed["resumed_from_epoch"] == CRASH_AFTER + 1
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]


def test_launch_restarts_a_crashed_worker_group_from_its_checkpoint(reference_run, example_files, tmp_path,
                                                                    monkeypatch):
    """Rank 1 dies after epoch 1: ``launch`` starts a fresh torchrun, which resumes at epoch 2; same weights."""
    cfg = load_config("local", overrides=[f"models_dir={tmp_path}", "train.launcher=torchrun", "train.max_restarts=1"])
    model_dir = tmp_path / "mf-restarted"
    monkeypatch.setenv(FAULT_ENV, f"train.epoch_end:{CRASH_AFTER}@1")
    launch(cfg, [write_inputs(model_dir, example_files)])

    restarted, reference = meta(model_dir), meta(reference_run)
    assert restarted["restarts"] == 1
    assert restarted["resumed_from_epoch"] == CRASH_AFTER + 1
    assert restarted["weights_sha256"] == reference["weights_sha256"]


def test_one_launch_trains_each_model_in_turn_and_a_restart_skips_the_finished_ones(example_files, tmp_path,
                                                                                    monkeypatch):
    """Two models in one launch (in this process): a crash after the second one's first checkpoint restarts
    the launch with the second only, resumed; the first, finished, is not trained again."""
    cfg = load_config("local", overrides=[f"models_dir={tmp_path}", "train.launcher=in_process", "train.max_restarts=1"])
    first, second = (write_inputs(tmp_path / name, example_files, epochs=2, batch_size=1024)
                     for name in ("mf-first", "mf-second"))
    # The first model's writes: 2 checkpoints, model.pt, meta.json, its folder, LATEST; then the second's checkpoint.
    monkeypatch.setenv(FAULT_ENV, "train.write:7=raise")
    launch(cfg, [first, second])

    done = {path.parent.name: meta(path.parent) for path in (first, second)}
    assert done["mf-first"]["restarts"] == 0 and done["mf-first"]["resumed_from_epoch"] is None
    assert done["mf-second"]["restarts"] == 1 and done["mf-second"]["resumed_from_epoch"] == 1


def test_model_pt_rebuilds_the_published_model_history_included(reference_run):
    model, head = load_model(reference_run / MODEL_FILE)
    assert model.has_history and head is None
    published = FactorModel.load(reference_run / "factors.npz")
    rebuilt = FactorModel.from_mf(model)
    assert np.array_equal(rebuilt.user_factors, published.user_factors)
    assert np.array_equal(rebuilt.item_factors, published.item_factors)


def test_training_twice_with_the_same_seed_gives_identical_weights(example_files, tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    digests = {}
    for name, seed in (("first", 5), ("second", 5), ("other_seed", 6)):
        train_worker([str(write_inputs(tmp_path / name, example_files, epochs=2, batch_size=1024, seed=seed,
                                       softmax_negatives=200))])  # 800 items: the sampled softmax
        digests[name] = meta(tmp_path / name)["weights_sha256"]
    assert digests["first"] == digests["second"]
    assert digests["other_seed"] != digests["first"]


def test_a_checkpoint_of_other_inputs_is_not_resumed(example_files, tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    model_dir = tmp_path / "mf-changed"
    train_worker([str(write_inputs(model_dir, example_files, epochs=1, batch_size=1024, lr=0.01))])
    train_worker([str(write_inputs(model_dir, example_files, epochs=2, batch_size=1024, lr=0.05))])
    assert meta(model_dir)["resumed_from_epoch"] is None
    assert len(meta(model_dir)["history"]) == 2
    train_worker([str(write_inputs(model_dir, example_files, epochs=3, batch_size=1024, lr=0.05))])
    assert meta(model_dir)["resumed_from_epoch"] == 2  # more epochs on the same inputs: continues


def test_mlflow_tracks_params_epochs_and_model_files_and_a_resumed_run_continues_its_run(
        example_files, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from lakerec.tracking import tracking_uri

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    store = tmp_path / "mlruns"
    model_dir = tmp_path / "mf-tracked"
    tracked = {"batch_size": 1024, "mlflow": True, "mlflow_tracking_uri": str(store), "mlflow_experiment": "test"}
    train_worker([str(write_inputs(model_dir, example_files, epochs=2, **tracked))])
    first = meta(model_dir)["mlflow_run_id"]
    train_worker([str(write_inputs(model_dir, example_files, epochs=3, **tracked))])  # resumes epoch 2

    assert meta(model_dir)["mlflow_run_id"] == first
    client = MlflowClient(tracking_uri(str(store)))
    run = client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.params["dim"] == str(TRAIN["dim"]) and run.data.params["n_items"] == str(N_ITEMS)
    losses = client.get_metric_history(first, "loss")
    assert sorted(m.step for m in losses) == [0, 1, 2]
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == [h["loss"] for h in meta(model_dir)["history"]]
    assert {a.path for a in client.list_artifacts(first, "model")} >= {"model/model.pt", "model/factors.npz",
                                                                       "model/meta.json"}
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert (store / "mlflow.db").is_file() and any((store / "artifacts").rglob("factors.npz"))


def test_a_run_killed_after_its_early_stop_epoch_publishes_without_training_on(example_files, tmp_path, monkeypatch):
    """The checkpoint of the epoch that stopped early is final: resuming from it trains no further epoch."""
    from lakerec.validation import ValidationSet

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    rng = np.random.default_rng(5)
    users = np.arange(0, N_USERS, 10)
    val_path = tmp_path / "validation.npz"
    ValidationSet(users, [set(rng.integers(0, N_ITEMS, 3).tolist()) for _ in users],
                  [np.zeros(0, np.int64) for _ in users]).save(val_path)
    model_dir = tmp_path / "mf-early"
    inputs_path = write_inputs(model_dir, example_files, epochs=8, patience=1)
    inputs = json.loads(inputs_path.read_text())
    inputs_path.write_text(json.dumps({**inputs, "validation": str(val_path)}))

    train_worker([str(inputs_path)])
    stopped = meta(model_dir)
    assert len(stopped["history"]) < 8, "no early stop: the test needs one"
    (model_dir / META_FILE).unlink()  # as if killed after the last checkpoint, before publishing
    train_worker([str(inputs_path)])
    resumed = meta(model_dir)
    assert resumed["resumed_from_epoch"] == 8
    assert resumed["history"] == stopped["history"]
    assert resumed["weights_sha256"] == stopped["weights_sha256"]
