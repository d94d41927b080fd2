"""Config: validated once, and every failure names the key (no Spark needed)."""
import re
from pathlib import Path

import pytest
import yaml

from lakerec.cli import parse_args
from lakerec.config import CONF_DIR, CONF_DIR_ENV, Config, ConfigError, conf_dir, load_config, settings


def test_defaults_load_and_overrides_apply():
    cfg = load_config("local", overrides=["train.epochs=3", "score.top_n=7", "evaluate.k=[5, 10]"])
    assert cfg.train.epochs == 3
    assert cfg.score.top_n == 7
    assert cfg.evaluate.k == [5, 10]
    assert cfg.spark.delta_package == "io.delta:delta-spark_4.2_2.13:4.4.0"


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epoch=3", "train.epoch"),
        ("nonsense=1", "nonsense"),
        ("train.epochs=ten", "train.epochs"),
        ("train.lr=fast", "train.lr"),
        ("train.launcher=mpirun", "train.launcher"),
        ("evaluate.k=10", "evaluate.k"),
        ("features.test_fraction=1.5", "features.test_fraction"),
        ("score.top_n=0", "score.top_n"),
        ("train.recency_decay=-1", "train.recency_decay"),
        ("train.history_decay=-0.5", "train.history_decay"),
        ("train.user_history=maybe", "train.user_history"),
        ("source.path=/no/such/dir", "source.path"),
        ("spark.delta_jars=[/no/such.jar]", "spark.delta_jars[0]"),
        ("features.training_files=1", "features.training_files"),  # 2 DDP ranks by default
        ("train.weight_decay=-1e-4", "train.weight_decay"),
        ("train.validation_users=0", "train.validation_users"),
        ("evaluate.als.reg_param=-1", "evaluate.als.reg_param"),
        ("evaluate.als.tune_alphas=[1.0, -5.0]", "evaluate.als.alpha"),
        ("evaluate.als.rating_rank=0", "evaluate.als.rating_rank"),
        ("spark.conf={spark.executor: {memory: 8g}}", "spark.conf.spark.executor"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config("local", overrides=[override])


def test_decays_follow_the_split_unless_set():
    """Null weights recent examples and history when the split holds out the future, never under random_user."""
    from lakerec.model_store import DEFAULT_HISTORY_DECAY, DEFAULT_RECENCY_DECAY, resolved_train

    for split in ("temporal_user", "global_time"):
        tc = resolved_train(load_config("local", overrides=[f"features.split={split}"]))
        assert (tc.recency_decay, tc.history_decay) == (DEFAULT_RECENCY_DECAY, DEFAULT_HISTORY_DECAY)
        assert DEFAULT_RECENCY_DECAY > 0 and DEFAULT_HISTORY_DECAY > 0
    tc = resolved_train(load_config("local", overrides=["features.split=random_user"]))
    assert (tc.recency_decay, tc.history_decay) == (0.0, 0.0)
    tc = resolved_train(load_config("local", overrides=["features.split=random_user", "train.recency_decay=1.5",
                                                        "train.history_decay=3"]))
    assert (tc.recency_decay, tc.history_decay) == (1.5, 3.0)


def test_conf_file_layers_over_env(tmp_path: Path):
    extra = tmp_path / "team.yaml"
    extra.write_text("train:\n  dim: 16\nscore:\n  top_n: 5\n")
    cfg = load_config("local", conf_file=str(extra), overrides=["score.top_n=9"])
    assert (cfg.train.dim, cfg.score.top_n) == (16, 9)


def test_a_dotted_key_below_spark_conf_is_one_spark_setting():
    cfg = load_config("local", overrides=["spark.conf.spark.executor.memory=8g", "spark.conf.spark.sql.ansi.enabled=true"])
    assert cfg.spark.conf == {"spark.executor.memory": "8g", "spark.sql.ansi.enabled": "true"}


def test_unknown_env_and_missing_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="--env 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config("local", conf_file=str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("ds", ["25/11/2026", "20261125", "2026-W48-3", "2026-02-30", "2026-11-25 ", "2026-11-25T00:00"])
def test_a_ds_not_spelled_yyyy_mm_dd_is_rejected(ds):
    with pytest.raises(SystemExit):
        parse_args("x", ["--ds", ds])


def test_a_yyyy_mm_dd_ds_is_taken_as_given():
    assert parse_args("x", ["--ds", "2026-11-25"]).ds == "2026-11-25"


def test_mlflow_tracking_without_the_package_fails_naming_the_key(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: find_spec answers None
    with pytest.raises(ConfigError, match=re.escape("'train.mlflow'") + ".*lakerec\\[mlflow\\]"):
        load_config("local", overrides=["train.mlflow=true"])
    assert load_config("local").train.mlflow is False


def test_every_key_has_a_one_line_doc_and_a_default_from_the_code():
    rows = settings()
    keys = [s.key for s in rows]
    assert len(keys) == len(set(keys))
    for key in ("warehouse", "spark.conf", "source.interactions", "source.interactions.timestamp_format",
                "source.items.tag_separator", "features.training_files", "embed.fields", "train.mlflow_experiment",
                "score.min_coverage_ratio", "evaluate.k", "evaluate.als.tune_alphas",
                "evaluate.ease.max_user_item_cells"):
        assert key in keys
    assert all(s.doc.strip() and "\n" not in s.doc for s in rows), [s.key for s in rows if not s.doc.strip()]
    assert {s.key: s.default for s in rows}["train.epochs"] == Config().train.epochs


def _restated_defaults(data: dict, prefix: str = "") -> list[str]:
    """Keys of a config mapping whose value is the code's default: a copy that would go stale."""
    defaults = {s.key: s.default for s in settings()}
    found = []
    for key, value in data.items():
        dotted = prefix + key
        if isinstance(value, dict) and any(k.startswith(dotted + ".") for k in defaults):
            found += _restated_defaults(value, dotted + ".")
        elif dotted in defaults and value == defaults[dotted]:
            found.append(dotted)
    return found


def test_a_restated_default_is_found():
    stale = {"train": {"epochs": 15, "dim": 16}, "spark": {"master": "local[2]", "conf": {}},
             "source": {"interactions": {"file": "x.csv", "separator": ","}}, "evaluate": {"ease": {"l2": 250}}}
    assert _restated_defaults(stale) == ["train.epochs", "spark.master", "spark.conf", "source.interactions.separator",
                                         "evaluate.ease.l2"]


@pytest.mark.parametrize("name", ["base.yaml", "local.yaml", "smoke.yaml"])
def test_conf_files_hold_only_what_differs_from_the_code(name):
    data = yaml.safe_load((CONF_DIR / name).read_text()) or {}
    assert _restated_defaults(data) == [], f"conf/{name} repeats code defaults: delete those keys"


@pytest.mark.parametrize("env", sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "base"))
def test_every_conf_file_loads(env):
    load_config(env)


def test_the_conf_dir_is_the_flag_then_the_environment_then_the_checkout(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text("train: {epochs: 4}\n")
    (tmp_path / "team.yaml").write_text("score: {top_n: 9}\n")
    monkeypatch.delenv(CONF_DIR_ENV, raising=False)
    assert conf_dir() == CONF_DIR
    args = parse_args("t", ["--env", "team", "--conf-dir", str(tmp_path)])
    cfg = load_config(args.env, directory=args.conf_dir)
    assert (cfg.train.epochs, cfg.score.top_n) == (4, 9)
    monkeypatch.setenv(CONF_DIR_ENV, str(tmp_path))
    assert load_config("team").score.top_n == 9
    with pytest.raises(ConfigError, match="unknown --env 'team'"):
        load_config("team", directory=str(CONF_DIR))  # the flag wins over the environment


def test_executor_ranks_need_the_torch_distributor():
    with pytest.raises(ConfigError, match="train.ranks_on"):
        load_config("local", overrides=["train.ranks_on=executors", "train.launcher=torchrun"])
    assert load_config("local", overrides=["train.ranks_on=executors"]).train.ranks_on == "executors"
