"""spark-submit entry point: lakerec train (DDP training through Petastorm).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/train.py --ds YYYY-MM-DD [--env local] [--conf FILE] [--set k=v]
"""
from lakerec import train
from lakerec.cli import run_stage

if __name__ == "__main__":
    run_stage(train.run, "lakerec train")
