"""Hostile input and secrets (issue #15): --env paths, credentials in config, the Airflow command, torch.load.

Nothing here needs Spark, Airflow or an MLflow server: the config, the Tracker (with a recording
stand-in for the mlflow module), one single-process training run on a tiny parquet file, and the
DAG file imported against stand-in Airflow modules, its templates rendered with jinja2 and run by bash.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import logging
import re
import subprocess
import sys
import types
from dataclasses import asdict, replace
from pathlib import Path

import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakerec import config as config_module
from lakerec.cli import load, parse_args
from lakerec.config import REPO_ROOT, ConfigError, TrainConfig, load_config
from lakerec.pipeline import STAGES
from lakerec.redaction import REDACTED, SECRET_NAME, redacted

pytestmark = pytest.mark.faults

PASSWORD, TOKEN, S3_SECRET, AZURE_KEY = "s3cretPw", "t0kenValue", "S3SECRETKEY", "AzureAccountKey=="
SECRETS = (PASSWORD, TOKEN, S3_SECRET, AZURE_KEY)
MLFLOW_URI = f"https://alice:{PASSWORD}@mlflow.example.com:5000/api?token={TOKEN}&workspace=w1"
SECRET_OVERRIDES = [
    f"train.mlflow_tracking_uri={MLFLOW_URI}",
    f"spark.conf.spark.hadoop.fs.s3a.secret.key={S3_SECRET}",
    f"spark.conf.spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net={AZURE_KEY}",
    "spark.conf.spark.executor.memory=8g",
]


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


# ---------------------------------------------------------------- --env names a file under conf/

@pytest.mark.parametrize("env", ["../x", "/etc/passwd", "a/b", "..", "local/../local", "local.yaml", "local\n", ""])
def test_env_that_is_not_a_plain_name_is_rejected_before_any_file_is_read(env, monkeypatch):
    def no_read(path):
        raise AssertionError(f"read {path} before checking --env")

    monkeypatch.setattr(config_module, "read_yaml", no_read)
    with pytest.raises(ConfigError, match="--env"):
        load_config(env)


def test_a_job_given_a_path_as_env_exits_naming_env():
    with pytest.raises(SystemExit, match="bad config: --env"):
        load(parse_args("x", ["--env", "../../etc/passwd"]))


# ---------------------------------------------------------------- credentials never reach logs or files

@pytest.mark.parametrize("uri, shown", [
    ("https://user:s3cret@host/", f"https://user:{REDACTED}@host/"),
    ("https://host:5000/p?token=abc&x=1#f", f"https://host:5000/p?token={REDACTED}&x=1#f"),
    ("postgresql://u:p@ss@db/mlflow?sslmode=require", f"postgresql://u:{REDACTED}@db/mlflow?sslmode=require"),
    ("https://acct.blob.core.windows.net/c?sv=1&sig=abc", f"https://acct.blob.core.windows.net/c?sv=1&sig={REDACTED}"),
    ("abfss://container@acct.dfs.core.windows.net/warehouse", "abfss://container@acct.dfs.core.windows.net/warehouse"),
    ("mlruns", "mlruns"),
    ("databricks", "databricks"),
])
def test_redacted_hides_uri_passwords_and_secret_query_values_only(uri, shown):
    assert redacted(uri) == shown


def test_redacted_config_hides_every_secret_and_keeps_the_rest():
    cfg = load_config("local", overrides=SECRET_OVERRIDES)
    shown = redacted(cfg)
    assert not _leaks(json.dumps(shown))
    assert shown["spark"]["conf"] == {"spark.hadoop.fs.s3a.secret.key": REDACTED,
                                      "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": REDACTED,
                                      "spark.executor.memory": "8g"}
    assert shown["train"]["mlflow_tracking_uri"] == \
        f"https://alice:{REDACTED}@mlflow.example.com:5000/api?token={REDACTED}&workspace=w1"
    assert cfg.train.mlflow_tracking_uri == MLFLOW_URI  # the config itself keeps what the jobs need
    assert redacted(load_config("local")) == asdict(load_config("local"))  # nothing redacted without secrets


def test_the_config_a_job_logs_holds_no_credentials(caplog):
    argv = [arg for override in SECRET_OVERRIDES for arg in ("--set", override)]
    with caplog.at_level(logging.INFO, logger="lakerec"):
        load(parse_args("x", argv))
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("config (--env local)")]
    assert len(logged) == 1 and "spark.executor.memory" in logged[0]
    assert not _leaks(caplog.text)


def test_spark_ui_and_event_logs_redact_the_same_keys():
    from lakerec.spark import session_settings

    cfg = load_config("local", overrides=SECRET_OVERRIDES)
    settings = session_settings(cfg)
    assert settings["spark.redaction.regex"] == SECRET_NAME
    pattern = re.compile(SECRET_NAME)  # Java reads this pattern the same way
    secret_keys = [k for k in settings if pattern.search(k)]
    assert sorted(secret_keys) == ["spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net",
                                   "spark.hadoop.fs.s3a.secret.key"]
    mine = load_config("local", overrides=["spark.conf.spark.redaction.regex=(?i)secret"])
    assert session_settings(mine)["spark.redaction.regex"] == "(?i)secret"  # an explicit setting wins


class RecordingMlflow(types.ModuleType):
    """What the Tracker sends to MLflow, as text: params, log lines' URIs, artifact contents."""

    def __init__(self) -> None:
        super().__init__("mlflow")
        self.uri, self.sent = "", []

    def set_tracking_uri(self, uri):
        self.uri = uri

    def get_tracking_uri(self):
        return self.uri

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name, artifact_location=None):
        return "1"

    def start_run(self, run_id=None, experiment_id=None, run_name=None):
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "run-1"))

    def log_params(self, params):
        self.sent.append(json.dumps(params))

    def log_metrics(self, metrics, step=None):
        self.sent.append(json.dumps(metrics))

    def log_artifact(self, path, artifact_path=None):
        self.sent.append(Path(path).read_bytes().decode("latin-1"))

    def log_dict(self, dictionary, artifact_file):
        self.sent.append(f"{artifact_file}: {json.dumps(dictionary)}")

    def end_run(self):
        pass


@pytest.fixture
def recording_mlflow(monkeypatch) -> RecordingMlflow:
    fake = RecordingMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    return fake


def test_mlflow_params_log_lines_and_json_artifacts_hold_no_credentials(recording_mlflow, tmp_path, caplog):
    from lakerec.tracking import Tracker

    tc = TrainConfig(mlflow=True, mlflow_tracking_uri=MLFLOW_URI)
    train = asdict(tc)
    for name in ("inputs.json", "meta.json"):
        (tmp_path / name).write_text(json.dumps({"train": train, "model_version": "mf-1"}))
    with caplog.at_level(logging.INFO, logger="lakerec.tracking"):
        tracker = Tracker(tc, "mf-1", None, {**train, "model_version": "mf-1", "api_token": TOKEN})
        tracker.finish(tmp_path, {"final_loss": 0.5})
    assert recording_mlflow.uri == MLFLOW_URI  # MLflow itself gets the real URI
    sent = "\n".join(recording_mlflow.sent)
    assert "model/inputs.json" in sent and "model/meta.json" in sent and '"dim": ' in sent
    assert not _leaks(sent) and not _leaks(caplog.text)
    assert "MLflow run run-1 in https://alice:***@mlflow.example.com" in caplog.text


def test_redact_inputs_cleans_a_finished_models_inputs_and_leaves_the_rest(tmp_path):
    """What the train job runs on a model it finds finished (one whose run stopped between the rename and
    the rewrite, or one from before the rewrite existed): credentials out, everything else as it was."""
    from lakerec.model_store import TrainInputs, redact_inputs

    train = asdict(TrainConfig(mlflow=True, mlflow_tracking_uri=MLFLOW_URI))
    inputs = TrainInputs(model_version="mf-old", model_dir=str(tmp_path), files=["a.parquet"], table_version=3,
                         total_rows=10, n_users=2, n_items=3, input_versions={"t": 3}, train=train)
    inputs.save(tmp_path / "inputs.json")
    assert _leaks((tmp_path / "inputs.json").read_text())
    redact_inputs(tmp_path)
    cleaned = TrainInputs.load(tmp_path / "inputs.json")
    assert not _leaks((tmp_path / "inputs.json").read_text())
    assert cleaned == replace(inputs, train={**train, "mlflow_tracking_uri": cleaned.train["mlflow_tracking_uri"]})
    assert REDACTED in cleaned.train["mlflow_tracking_uri"] and sorted(p.name for p in tmp_path.iterdir()) == ["inputs.json"]
    redact_inputs(tmp_path)  # nothing left to redact: unchanged
    assert TrainInputs.load(tmp_path / "inputs.json") == cleaned


def _one_tiny_parquet(folder: Path) -> list[str]:
    rng = np.random.default_rng(3)
    users = np.sort(rng.integers(0, 40, 600)).astype(np.int32)
    table = pa.table({"user_idx": users, "item_idx": rng.integers(0, 30, 600).astype(np.int32),
                      "label": np.ones(600, np.float32)})
    pq.write_table(table, folder / "part-00000.parquet", row_group_size=200)
    return [str(folder / "part-00000.parquet")]


def test_a_trained_model_folder_and_its_mlflow_run_hold_no_credentials(recording_mlflow, tmp_path, monkeypatch, caplog):
    """One single-process epoch on 600 rows: meta.json, model.pt, checkpoints and MLflow stay clean."""
    from lakerec.data import count_rows
    from lakerec.model_store import TrainInputs, checkpoint_paths
    from lakerec.trainer import train_worker

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    files = _one_tiny_parquet(tmp_path)
    model_dir = tmp_path / "mf-secret"
    model_dir.mkdir()
    train = asdict(TrainConfig(model="mf", dim=4, epochs=1, batch_size=128, reader_workers=1, shuffle_buffer=0,
                               rating_weight=0.0, mlflow=True, mlflow_tracking_uri=MLFLOW_URI))
    TrainInputs(model_version=model_dir.name, model_dir=str(model_dir), files=files, table_version=1,
                total_rows=count_rows(files), n_users=40, n_items=30, input_versions={}, train=train,
                ).save(model_dir / "inputs.json")
    with caplog.at_level(logging.INFO):
        train_worker([str(model_dir / "inputs.json")])
    written = {p.name: p.read_bytes().decode("latin-1") for p in [*model_dir.rglob("*"), *checkpoint_paths(model_dir)]
               if p.is_file()}
    assert {"inputs.json", "meta.json", "model.pt", "factors.npz"} <= set(written)
    assert {name: _leaks(text) for name, text in written.items() if _leaks(text)} == {}
    assert REDACTED in written["meta.json"]
    # The workers read the real URI; the finished folder keeps the rest of what they were given.
    kept = TrainInputs.load(model_dir / "inputs.json")
    assert kept.files == files and kept.train["dim"] == 4 and REDACTED in kept.train["mlflow_tracking_uri"]
    assert not _leaks("\n".join(recording_mlflow.sent)) and not _leaks(caplog.text)


# ---------------------------------------------------------------- the Airflow DAG quotes what it templates

class StandInTask:
    """Records what the DAG hands a BashOperator."""

    def __init__(self, task_id: str, bash_command: str, env: dict | None = None, append_env: bool = False,
                 execution_timeout=None) -> None:
        self.task_id, self.bash_command, self.env, self.append_env = task_id, bash_command, env, append_env
        self.execution_timeout = execution_timeout

    def __rshift__(self, other: "StandInTask") -> "StandInTask":
        return other


class StandInDag:
    def __init__(self, **kwargs) -> None:
        self.tasks: list[StandInTask] = []

    def __enter__(self) -> "StandInDag":
        return self

    def __exit__(self, *exc) -> None:
        return None


@pytest.fixture
def dag_tasks(monkeypatch) -> list[StandInTask]:
    """The DAG file imported against stand-in Airflow 3 modules: its BashOperators, in order."""
    tasks: list[StandInTask] = []

    def bash_operator(**kwargs) -> StandInTask:
        tasks.append(StandInTask(**kwargs))
        return tasks[-1]

    names = ["airflow", "airflow.sdk", "airflow.providers", "airflow.providers.standard",
             "airflow.providers.standard.operators", "airflow.providers.standard.operators.bash"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["airflow.sdk"].DAG = StandInDag
    sys.modules["airflow.sdk"].Variable = object
    sys.modules["airflow.providers.standard.operators.bash"].BashOperator = bash_operator
    spec = importlib.util.spec_from_file_location("lakerec_nightly_dag", REPO_ROOT / "airflow" / "lakerec_nightly.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return tasks


def _render(template: str, ds: str, variables: dict[str, str]) -> str:
    """As Airflow renders a templated field: ``{{ ds }}`` and ``var.value`` (``.name`` and ``.get``)."""
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        ds=ds, var={"value": variables})


def _run_task(task: StandInTask, ds: str, variables: dict[str, str], tmp_path: Path) -> dict:
    """Run the rendered task with bash, spark-submit a stub that records its arguments and cwd."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    record = tmp_path / "spark-submit.json"
    stub = stubs / "spark-submit"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], 'cwd': os.getcwd(), "
                    f"'env': {{k: v for k, v in os.environ.items() if k.startswith(('PY', 'LAKEREC_CONF_DIR'))}}}}))\n")
    stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", **{k: _render(v, ds, variables) for k, v in task.env.items()}}
    proc = subprocess.run(["bash", "-c", _render(task.bash_command, ds, variables)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(record.read_text())


def test_the_dag_templates_nothing_into_the_bash_command(dag_tasks):
    assert [t.task_id for t in dag_tasks] == [name for name, _ in STAGES]  # the pipeline's order
    timeouts = {t.task_id: t.execution_timeout for t in dag_tasks}
    assert all(timeouts.values()) and max(timeouts, key=timeouts.get) == "train"  # a hung run fails, train waits longest
    for task in dag_tasks:
        assert "{{" not in task.bash_command and "{%" not in task.bash_command
        assert task.append_env is True  # keeps PATH, JAVA_HOME, SPARK_HOME
        assert task.env["LAKEREC_DS"] == "{{ ds }}"


def test_hostile_variables_and_ds_stay_single_arguments_and_never_run(dag_tasks, tmp_path):
    home = tmp_path / "home; touch pwned-home $(touch pwned-sub)"
    home.mkdir()
    ds = "2026-01-01 $(touch pwned-ds)"
    variables = {"lakerec_home": str(home), "lakerec_env": "x; touch pwned-env `touch pwned-tick`",
                 "lakerec_submit_args": "--master local[2] ; touch pwned-args $(touch pwned-sub2) *\n--conf a=b",
                 "lakerec_conf": "team.yaml; touch pwned-conf", "lakerec_python": "py $(touch pwned-py)"}
    ran = _run_task(dag_tasks[0], ds, variables, tmp_path)
    assert ran["cwd"] == str(home)
    assert ran["argv"] == ["--master", "local[2]", ";", "touch", "pwned-args", "$(touch", "pwned-sub2)", "*",
                           "--conf", "a=b", "jobs/ingest.py", "--ds", ds, "--env", variables["lakerec_env"],
                           "--conf", variables["lakerec_conf"]]
    # the library and config of lakerec_home, and the pipeline's interpreter, whatever their names hold
    assert ran["env"]["PYTHONPATH"].split(":")[0] == f"{home}/lib" and ran["env"]["LAKEREC_CONF_DIR"] == f"{home}/conf"
    assert ran["env"]["PYSPARK_PYTHON"] == ran["env"]["PYSPARK_DRIVER_PYTHON"] == variables["lakerec_python"]
    assert sorted(p.name for p in tmp_path.rglob("pwned*")) == []


def test_the_dag_defaults_submit_with_the_delta_package_and_the_cluster_env(dag_tasks, tmp_path):
    ran = _run_task(dag_tasks[-1], "2026-11-25", {"lakerec_home": str(tmp_path)}, tmp_path)
    assert ran["argv"] == ["--packages", "io.delta:delta-spark_4.2_2.13:4.4.0", "jobs/evaluate.py",
                           "--ds", "2026-11-25", "--env", "cluster"]


# ---------------------------------------------------------------- torch.load never unpickles arbitrary objects

def _torch_loads(source: str) -> dict[int, bool]:
    """Each ``torch.load(...)`` call by line: whether it passes ``weights_only=True``."""
    return {node.lineno: any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                             for k in node.keywords)
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"}


def test_every_torch_load_in_the_code_is_weights_only():
    sources = [p for folder in ("lib", "bench", "jobs") for p in sorted((REPO_ROOT / folder).rglob("*.py"))]
    calls = {(str(p.relative_to(REPO_ROOT)), line): safe
             for p in sources for line, safe in _torch_loads(p.read_text()).items()}
    assert [call for call, safe in calls.items() if not safe] == []
    assert len(calls) >= 4  # the check saw the real calls (model_store and trainer)


def test_the_torch_load_check_flags_a_full_unpickle():
    source = "torch.load(p)\ntorch.load(\n    p, weights_only=False)\ntorch.load(p, weights_only=True)"
    assert _torch_loads(source) == {1: False, 2: False, 4: True}
