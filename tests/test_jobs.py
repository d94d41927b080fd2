"""Jobs as users run them: through pyspark's real spark-submit, and failing fast on bad config."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest
import yaml

from lakerec.config import REPO_ROOT

SPARK_SUBMIT = Path(pyspark.__file__).parent / "bin" / "spark-submit"


def _overrides(tmp_path: Path, source: Path) -> list[str]:
    return ["--set", f"warehouse={tmp_path}/warehouse", "--set", f"models_dir={tmp_path}/models",
            "--set", f"source.path={source}", "--set", "spark.shuffle_partitions=2"]


@pytest.mark.slow
def test_ingest_job_runs_under_spark_submit(spark, tiny_source, tmp_path):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cmd = [str(SPARK_SUBMIT), "--master", "local[1]", "--packages", "io.delta:delta-spark_4.2_2.13:4.4.0",
           str(REPO_ROOT / "jobs" / "ingest.py"), "--ds", "2026-02-01", *_overrides(tmp_path, tiny_source)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bronze = spark.read.format("delta").load(f"{tmp_path}/warehouse/bronze/interactions")
    expected = len((tiny_source / "ratings.csv").read_text().splitlines()) - 1
    assert bronze.count() == expected
    assert "lakerec ingest done for ds=2026-02-01" in proc.stdout + proc.stderr


@pytest.mark.parametrize("bad, key", [("train.epochs=many", "train.epochs"), ("score.topn=5", "score.topn")])
def test_bad_config_fails_before_any_write(tiny_source, tmp_path, bad, key):
    cmd = [sys.executable, str(REPO_ROOT / "jobs" / "ingest.py"), "--ds", "2026-02-01",
           *_overrides(tmp_path, tiny_source), "--set", bad]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"'{key}'" in proc.stderr
    assert not (tmp_path / "warehouse").exists()


@pytest.mark.slow
def test_the_wheel_runs_without_a_checkout(tmp_path):
    """What spark-submit --py-files lakerec.whl gets: the config packaged inside, paths from the working dir."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(REPO_ROOT)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("lakerec-*.whl"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    source = REPO_ROOT / "data" / "ml-latest-small"
    probe = ("import json, lakerec; from lakerec import config; "
             f"cfg = config.load_config('smoke', overrides=['source.path={source}']); "
             "print(json.dumps({'module': lakerec.__file__, 'conf': str(config.conf_dir()), "
             "'checkout': config.in_checkout(), 'epochs': cfg.train.epochs, 'warehouse': config.resolve_path(cfg.warehouse)}))")
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    env.pop("LAKEREC_CONF_DIR", None)
    out = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True,
                                    text=True, check=True).stdout)
    assert out["module"].startswith(str(wheel)) and out["conf"].startswith(str(wheel))
    smoke = yaml.safe_load((REPO_ROOT / "conf" / "smoke.yaml").read_text())
    assert out["checkout"] is False and out["epochs"] == smoke["train"]["epochs"]  # read from inside the wheel
    assert out["warehouse"] == str(elsewhere / "warehouse")
