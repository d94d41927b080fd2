"""One SparkSession helper for spark-submit, in-process runs and tests, with Delta configured."""
from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from lakerec.config import Config, resolve_path
from lakerec.redaction import SECRET_NAME

log = logging.getLogger(__name__)

MAVEN_HINT = (
    "Spark could not start. With the default config the Delta jars ({package}) are fetched from "
    "Maven Central through spark.jars.packages on first use and cached in ~/.ivy2: check that this "
    "machine reaches Maven Central (or a mirror set in ~/.m2/settings.xml / spark.jars.ivySettings), "
    "or set spark.delta_jars in config to local delta-spark_4.2_2.13 and delta-storage jars. "
    "Also check that JAVA_HOME points at Java 17 (Spark 4 needs it)."
)


def session_settings(cfg: Config) -> dict[str, str]:
    """Every Spark setting lakerec sets: Delta, Arrow, UTC, redaction, then ``spark.conf`` over them."""
    sc = cfg.spark
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.driver.memory": sc.driver_memory,
        "spark.sql.shuffle.partitions": str(sc.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(sc.arrow_batch_size),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.databricks.delta.snapshotPartitions": "2",
        # Delta's own schema checks are the contract; never let a write silently add columns.
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # The Spark UI and event logs hide the values of the keys lakerec redacts (Azure account keys too).
        "spark.redaction.regex": SECRET_NAME,
    }
    if sc.delta_jars:
        settings["spark.jars"] = ",".join(resolve_path(j) for j in sc.delta_jars)
    else:
        settings["spark.jars.packages"] = sc.delta_package
    settings.update(sc.conf)
    return settings


def build_spark(cfg: Config) -> SparkSession:
    """Return the active SparkSession, creating one with Delta Lake and Arrow configured.

    Under spark-submit the JVM already exists: the master and jars come from the command line
    (``--packages io.delta:delta-spark_4.2_2.13:4.4.0``), and the SQL settings still apply.
    """
    sc = cfg.spark
    # Python workers must run the interpreter that runs the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(sc.app_name)
    if sc.master:
        builder = builder.master(sc.master)
    for key, value in session_settings(cfg).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j raises a bare Exception/RuntimeError when the JVM never came up
        if "JAVA_GATEWAY_EXITED" in str(exc) or "Java gateway process exited" in str(exc):
            raise RuntimeError(MAVEN_HINT.format(package=sc.delta_package)) from exc
        raise
    spark.sparkContext.setLogLevel("WARN")
    return spark
