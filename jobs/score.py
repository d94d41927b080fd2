"""spark-submit entry point: lakerec score (nightly top-N -> serving.recommendations).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/score.py --ds YYYY-MM-DD [--env local] [--conf FILE] [--set k=v]
"""
from lakerec import score
from lakerec.cli import run_stage

if __name__ == "__main__":
    run_stage(score.run, "lakerec score")
