"""The model folder contract: checkpoints that survive damage, a LATEST that only moves forward and\ncannot point outside models_dir, and warm starts from the previous night."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lakerec import lifeline
from lakerec.config import load_config
from lakerec.model_store import (BACKTEST, BEST_FILE, LATEST_FILE, META_FILE, SERVING, ModelLockedError, atomic_write,
                                 checkpoint_paths, latest_model_dir, load_best, load_checkpoint, lock,
                                 previous_serving_model, publish_latest, save_best, save_checkpoint, warm_start)
from lakerec.models import MatrixFactorization


def _finished(root: Path, version: str, ds: str) -> Path:
    model_dir = root / version
    model_dir.mkdir()
    (model_dir / META_FILE).write_text(json.dumps({"model_version": version, "ds": ds}))
    return model_dir


def test_latest_moves_forward_only_by_ds(tmp_path):
    night2 = _finished(tmp_path, "mf-serving-2026-01-02-t5-a", "2026-01-02")
    assert publish_latest(night2, "2026-01-02")
    backfill = _finished(tmp_path, "mf-serving-2026-01-01-t3-a", "2026-01-01")
    assert not publish_latest(backfill, "2026-01-01")
    assert (tmp_path / LATEST_FILE).read_text() == night2.name
    retrained = _finished(tmp_path, "mf-serving-2026-01-02-t5-b", "2026-01-02")  # same night, other settings
    assert publish_latest(retrained, "2026-01-02")
    assert (tmp_path / LATEST_FILE).read_text() == retrained.name


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    for epoch in (0, 1):
        save_checkpoint(tmp_path, epoch, {"epoch": epoch, "fingerprint": "f"})
    newest = checkpoint_paths(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:20])  # cut short, as by a full disk
    assert load_checkpoint(tmp_path, "f")["epoch"] == 0
    assert load_checkpoint(tmp_path, "other inputs") is None


@pytest.mark.faults
def test_a_damaged_best_pt_publishes_the_last_epoch_instead_of_failing_every_retry(tmp_path, caplog):
    save_best(tmp_path, {"w": torch.ones(3)})
    assert torch.equal(load_best(tmp_path)["w"], torch.ones(3))
    (tmp_path / BEST_FILE).write_bytes((tmp_path / BEST_FILE).read_bytes()[:20])
    assert load_best(tmp_path) is None and "publishing the last epoch's weights" in caplog.text


@pytest.mark.faults
def test_a_second_run_on_a_model_version_being_trained_fails_at_once(tmp_path):
    with lock(tmp_path, "mf-serving-2026-01-02-t5-a"):
        with pytest.raises(ModelLockedError, match=f"being trained by another run \\(pid {os.getpid()}"):
            with lock(tmp_path, "mf-serving-2026-01-02-t5-a"):
                pass
        with lock(tmp_path, "mf-serving-2026-01-02-t5-b"):  # another version trains beside it
            pass
    with lock(tmp_path, "mf-serving-2026-01-02-t5-a"):  # released with the first run
        pass


@pytest.mark.faults
def test_writers_never_share_a_temporary_name_and_a_failed_write_leaves_the_file(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text("good")
    seen = []

    def fails(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_text("half")
        raise OSError("disk full")

    for _ in range(2):
        with pytest.raises(OSError):
            atomic_write(target, fails)
    assert target.read_text() == "good" and len(set(seen)) == 2 and str(os.getpid()) in seen[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]  # no temporary left behind


def start_rank(launcher: str) -> subprocess.Popen:
    """A stand-in rank that watches ``launcher`` (``LAKEREC_LAUNCHER_PID``'s value) and otherwise sleeps."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; from lakerec import lifeline; lifeline.exit_with_launcher(0.05); "
                               "time.sleep(600)"],
        env={**os.environ, lifeline.LAUNCHER_ENV: launcher})


@pytest.mark.faults
def test_a_rank_exits_when_its_launcher_dies(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    rank = start_rank(lifeline.launcher_id(launcher.pid))
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            rank.wait(timeout=1)  # its launcher lives: it keeps running
        launcher.kill()
        launcher.wait()
        assert rank.wait(timeout=60) == lifeline.EXIT_CODE
    finally:
        for proc in (launcher, rank):
            proc.kill()


@pytest.mark.faults
def test_a_rank_tells_its_launcher_from_a_later_process_given_the_same_pid():
    """The launcher is gone and its pid now names another process (this one, started at another time)."""
    pid, started = lifeline.launcher_id(os.getpid()).split(":")
    rank = start_rank(f"{pid}:{float(started) - 60}")
    try:
        assert rank.wait(timeout=60) == lifeline.EXIT_CODE
    finally:
        rank.kill()


def test_latest_must_name_a_model_folder_under_models_dir(tmp_path):
    cfg = load_config("local", overrides=[f"models_dir={tmp_path}"])
    for content in ("../../etc", "/etc", ".mf-serving-x.partial", ""):
        (tmp_path / LATEST_FILE).write_text(content)
        with pytest.raises(ValueError, match="not the name of a model folder"):
            latest_model_dir(cfg)
    (tmp_path / LATEST_FILE).write_text("mf-serving-2026-01-02-t5-a\n")
    assert latest_model_dir(cfg) == tmp_path / "mf-serving-2026-01-02-t5-a"


def test_warm_start_copies_the_rows_the_previous_night_knew(tmp_path):
    torch.manual_seed(0)
    previous, tonight = MatrixFactorization(3, 4, 8), MatrixFactorization(5, 6, 8)
    fresh = tonight.user.weight[3:].detach().clone()
    assert warm_start(tonight, previous.state_dict()) == 3
    assert torch.equal(tonight.user.weight[:3], previous.user.weight)
    assert torch.equal(tonight.item.weight[:4], previous.item.weight)
    assert torch.equal(tonight.user.weight[3:], fresh)  # new users keep their fresh rows


def test_previous_serving_model_is_the_newest_earlier_night_of_the_same_recipe(tmp_path):
    recipe = {"dim": 8, "epochs": 15}
    for version, ds, role, train in (("a", "2026-01-01", SERVING, recipe), ("b", "2026-01-02", SERVING, recipe),
                                     ("c", "2026-01-03", SERVING, recipe), ("d", "2026-01-02", BACKTEST, recipe),
                                     ("e", "2026-01-02", SERVING, {"dim": 16, "epochs": 15})):
        (tmp_path / version).mkdir()
        (tmp_path / version / META_FILE).write_text(json.dumps({"ds": ds, "role": role, "train": train}))
    assert previous_serving_model(tmp_path, "2026-01-03", {"dim": 8, "epochs": 4}) == tmp_path / "b"
    assert previous_serving_model(tmp_path, "2026-01-01", recipe) is None
