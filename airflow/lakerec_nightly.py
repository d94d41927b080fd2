"""Airflow DAG: the lakerec nightly pipeline, one spark-submit task per job, ds templated.

Copy this file into the DAGs folder and set the Airflow Variables `lakerec_home` (a checkout or
unpacked release on the workers) and, optionally, `lakerec_env` (conf/<env>.yaml, default cluster)
and `lakerec_submit_args` (master, deploy mode, --py-files, --packages or --jars).
Every task replaces only its own outputs for {{ ds }} (MERGE in bronze, replaceWhere elsewhere),
so retries and backfills (`airflow dags backfill -s 2026-11-01 -e 2026-11-07 lakerec_nightly`)
never duplicate rows, and a failed score task leaves the previous day's recommendations published.
"""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

STAGES = ("ingest", "features", "embed", "train", "score", "evaluate")
SUBMIT = (
    "cd {{ var.value.lakerec_home }} && "
    "spark-submit {{ var.value.get('lakerec_submit_args', '--packages io.delta:delta-spark_2.13:4.0.1') }} "
    "jobs/{stage}.py --ds {{ ds }} --env {{ var.value.get('lakerec_env', 'cluster') }}"
)

with DAG(
    dag_id="lakerec_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=True,
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
