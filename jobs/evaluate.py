"""spark-submit entry point: lakerec evaluate (ranking metrics vs baselines -> serving.metrics).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/evaluate.py --ds YYYY-MM-DD [--env local] [--conf FILE] [--set k=v]
"""
from lakerec import evaluate
from lakerec.cli import run_stage

if __name__ == "__main__":
    run_stage(evaluate.run, "lakerec evaluate")
