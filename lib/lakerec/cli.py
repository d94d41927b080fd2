"""Command-line plumbing shared by every job: arguments, config, logging, SparkSession."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lakerec
from lakerec.config import Config, ConfigError, load_config
from lakerec.redaction import redacted

log = logging.getLogger("lakerec")


def _ds(value: str) -> str:
    """``--ds`` as a real calendar date in exactly ``YYYY-MM-DD``: it names partitions and models.

    Python's ``fromisoformat`` also takes ``20261125`` and ``2026-W48-3``; those would name other
    partitions than the same night written the usual way, so only the one spelling is accepted.
    """
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ds must be a date YYYY-MM-DD, got {value!r}") from None
    return value


def parse_args(description: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ds", type=_ds, default=dt.date.today().isoformat(), help="run date YYYY-MM-DD (default: today)")
    parser.add_argument("--env", default="local", help="config environment: conf/<env>.yaml, a plain name (default: local)")
    parser.add_argument("--conf", help="extra YAML config file applied after conf/<env>.yaml")
    parser.add_argument("--conf-dir", help="folder holding base.yaml and <env>.yaml (default: $LAKEREC_CONF_DIR, "
                                           "else the checkout's conf/, else the defaults packaged in the wheel)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.epochs=5 (repeatable)")
    return parser.parse_args(argv)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("py4j", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load(args: argparse.Namespace) -> Config:
    """Load and validate config, and log it without credentials; a bad one exits before anything is written."""
    try:
        cfg = load_config(args.env, args.conf, args.set, args.conf_dir)
    except ConfigError as exc:
        raise SystemExit(f"lakerec: bad config: {exc}") from None
    log.info("config (--env %s): %s", args.env, json.dumps(redacted(cfg)))
    return cfg


def run_stage(stage: Callable[..., Any], description: str, argv: Optional[Sequence[str]] = None) -> Any:
    """Entry point of a ``jobs/<stage>.py``: parse args, load config, start Spark, run the stage."""
    from lakerec.spark import build_spark

    setup_logging()
    args = parse_args(description, argv)
    cfg = load(args)
    log.info("lakerec %s from %s", lakerec.__version__, Path(lakerec.__file__).parent)
    spark = build_spark(cfg)
    result = stage(spark, cfg, args.ds)
    log.info("%s done for ds=%s", description, args.ds)
    log.info("%s result: %s", description, json.dumps(result, default=_plain))
    return result


def _plain(value: Any) -> Any:
    """JSON for a stage's result: dataclasses as dicts, anything else as text."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)
