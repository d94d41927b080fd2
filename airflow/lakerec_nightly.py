"""Airflow DAG: the lakerec nightly pipeline, one spark-submit task per job, ds templated.

Copy this file into the DAGs folder and set the Airflow Variables `lakerec_home` (a checkout or
unpacked release on the workers) and, optionally, `lakerec_env` (conf/<env>.yaml, default cluster)
and `lakerec_submit_args` (master, deploy mode, --py-files, --packages or --jars). The first night
scheduled is `LAKEREC_START_DATE` (YYYY-MM-DD, from the scheduler's environment; a fixed date,
never "now", which would move the schedule on every parse).

`catchup` is off: unpausing the DAG runs the next night, not every night since the start date.
Each run for {{ ds }} reads only what had arrived by the end of {{ ds }} (drops ingested on or
before it, events not after it) and writes only {{ ds }}'s partitions and its own model version,
so a failed task can be cleared and rerun, and a missed or corrected night is backfilled one at a
time, oldest first (Airflow 3):

    airflow backfill create --dag-id lakerec_nightly --from-date 2026-11-01 --to-date 2026-11-07 \
        --max-active-runs 1

A backfilled night reads its own drop (`source.path` with `{ds}`) and the bronze rows that had
arrived by then; it never moves `models/LATEST` back and never rewrites a later night's outputs.
"""
import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

STAGES = ("ingest", "features", "embed", "train", "score", "evaluate")
SUBMIT = (
    "cd {{ var.value.lakerec_home }} && "
    "spark-submit {{ var.value.get('lakerec_submit_args', '--packages io.delta:delta-spark_2.13:4.0.1') }} "
    "jobs/{stage}.py --ds {{ ds }} --env {{ var.value.get('lakerec_env', 'cluster') }}"
)
START_DATE = datetime.fromisoformat(os.environ.get("LAKEREC_START_DATE", "2026-01-01"))

with DAG(
    dag_id="lakerec_nightly",
    schedule="0 2 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["lakerec", "recommendations"],
) as dag:
    previous = None
    for stage in STAGES:
        task = BashOperator(task_id=stage, bash_command=SUBMIT.replace("{stage}", stage))
        if previous is not None:
            previous >> task
        previous = task
