"""spark-submit entry point: lakerec segment (k-means user segments -> features.user_segments, segment_profiles).

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/segment.py --ds YYYY-MM-DD [--env local] [--conf FILE] [--set k=v]
"""
from lakerec import segment
from lakerec.cli import run_stage

if __name__ == "__main__":
    run_stage(segment.run, "lakerec segment")
