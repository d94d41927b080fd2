"""spark-submit entry point: lakerec ingest (raw files -> bronze + quarantine).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/ingest.py --ds YYYY-MM-DD [--env local] [--conf FILE] [--set k=v]
"""
from lakerec import ingest
from lakerec.cli import run_stage

if __name__ == "__main__":
    run_stage(ingest.run, "lakerec ingest")
