"""spark-submit entry point: lakerec features (id maps, silver interactions, training examples).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/features.py --ds YYYY-MM-DD [--env local] [--conf FILE] [--set k=v]
"""
from lakerec import features
from lakerec.cli import run_stage

if __name__ == "__main__":
    run_stage(features.run, "lakerec features")
