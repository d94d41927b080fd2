"""The model folder contract: checkpoints that survive damage, and a LATEST that only moves forward."""
import json
from pathlib import Path

from lakerec.model_store import LATEST_FILE, META_FILE, checkpoint_paths, load_checkpoint, publish_latest, save_checkpoint


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
