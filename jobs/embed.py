"""spark-submit entry point: lakerec embed (item text -> sentence embeddings, only changed items).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/embed.py --ds YYYY-MM-DD [--env local] [--conf FILE] [--set k=v]
"""
from lakerec import embed
from lakerec.cli import run_stage

if __name__ == "__main__":
    run_stage(embed.run, "lakerec embed")
