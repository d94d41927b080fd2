"""Optional MLflow tracking of a training run: params, per-epoch metrics, the model files.

Off unless ``train.mlflow`` is true; then rank 0 logs to ``train.mlflow_tracking_uri``. A local
folder becomes a local store: an SQLite database ``mlflow.db`` and the artifacts under
``artifacts/`` in it (MLflow's plain file store is in maintenance mode and refuses new runs since
3.x); any URI such as ``http://host:5000`` or ``databricks`` is used as-is. The mlflow package is
imported only then (``pip install 'lakerec[mlflow]'``): workers without it train as before. A
resumed run continues the MLflow run its checkpoint names instead of opening another.

Credentials belong in MLflow's own ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``. One written into the URI is hidden from the params, the logs and the
logged ``inputs.json`` / ``meta.json``; the model folder's ``inputs.json`` keeps it for the workers while
they train, and loses it when the folder is renamed into place.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from lakerec import model_store
from lakerec.config import TrainConfig, resolve_path
from lakerec.redaction import redacted

log = logging.getLogger(__name__)

MODEL_FILES = (model_store.MODEL_FILE, model_store.FACTORS_FILE, model_store.RATING_HEAD_FILE)
JSON_FILES = (model_store.META_FILE, model_store.INPUTS_FILE)  # logged redacted: inputs.json holds the real URI
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"


def local_store(value: str) -> Optional[Path]:
    """The folder of a local store, or None when ``train.mlflow_tracking_uri`` is a URI."""
    if ":" in value or value == "databricks":
        return None
    return Path(resolve_path(value)).resolve()


def tracking_uri(value: str) -> str:
    """``train.mlflow_tracking_uri`` as MLflow expects it: a local folder becomes its SQLite database."""
    folder = local_store(value)
    return value if folder is None else f"sqlite:///{folder / DB_FILE}"


class Tracker:
    """One MLflow run for one model version; every method is a no-op when tracking is off."""

    def __init__(self, tc: TrainConfig, run_name: str, run_id: Optional[str], params: dict[str, Any]) -> None:
        self.run_id: Optional[str] = None
        if not tc.mlflow:
            return
        import mlflow

        folder = local_store(tc.mlflow_tracking_uri)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(tracking_uri(tc.mlflow_tracking_uri))
        experiment = mlflow.get_experiment_by_name(tc.mlflow_experiment)
        if experiment is None:
            artifacts = (folder / ARTIFACTS_DIR).as_uri() if folder is not None else None
            experiment_id = mlflow.create_experiment(tc.mlflow_experiment, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: v for k, v in redacted(params).items() if v is not None})
        log.info("MLflow run %s in %s", self.run_id, redacted(mlflow.get_tracking_uri()))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.run_id is not None:
            import mlflow

            mlflow.log_metrics(metrics, step=epoch)

    def finish(self, model_dir: Path, metrics: dict[str, float]) -> None:
        """Log the final metrics and the model files (the JSON ones without credentials), and close the run."""
        if self.run_id is None:
            return
        import mlflow

        mlflow.log_metrics(metrics)
        for name in MODEL_FILES:
            if (model_dir / name).is_file():
                mlflow.log_artifact(str(model_dir / name), artifact_path="model")
        for name in JSON_FILES:
            if (model_dir / name).is_file():
                mlflow.log_dict(redacted(json.loads((model_dir / name).read_text())), f"model/{name}")
        mlflow.end_run()
