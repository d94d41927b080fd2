"""DDP training through the train job: 2 gloo ranks via TorchDistributor, identical weights, every row read."""
import json
import math

import pytest

from conftest import PIPELINE_DS
from lakerec.config import load_config
from lakerec.model_store import (
    BACKTEST, DEFAULT_HISTORY_DECAY, DEFAULT_RECENCY_DECAY, INPUTS_FILE, META_FILE, SERVING, TrainInputs,
    checkpoint_paths, latest_model_dir, models_root,
)
from lakerec.train import Placement


def _model_dir(cfg, results, role):
    """The night's ``role`` model folder, as the train job returned it."""
    return models_root(cfg) / results["train"][role]["model_version"]


def test_the_night_trains_a_backtest_and_a_serving_model_and_latest_names_the_serving_one(pipeline_run):
    cfg, results = pipeline_run
    assert set(results["train"]) == {BACKTEST, SERVING}  # nightly.backtest_every=1: due every night
    assert latest_model_dir(cfg) == _model_dir(cfg, results, SERVING)
    for role in (BACKTEST, SERVING):
        assert results["train"][role]["role"] == role
        assert results["train"][role]["model_version"].startswith(f"mf-{role}-{PIPELINE_DS}-")
    assert results["train"][SERVING]["warm_start"] is None  # the first night has no earlier serving model
    assert not list(models_root(cfg).glob(".*.partial"))  # both were renamed into place when finished
    ranks = [[r["pid"] for r in results["train"][role]["ranks"]] for role in (BACKTEST, SERVING)]
    assert ranks[0] == ranks[1]  # one launch: the same two rank processes trained both


@pytest.mark.parametrize("role", [BACKTEST, SERVING])
def test_two_ranks_train_to_identical_weights(pipeline_run, role):
    cfg, results = pipeline_run
    meta = json.loads((_model_dir(cfg, results, role) / META_FILE).read_text())
    assert meta["world_size"] == 2 == len(meta["rank_weights_sha256"])
    assert meta["rank_weights_sha256"][0] == meta["rank_weights_sha256"][1] == meta["weights_sha256"]
    assert len({r["pid"] for r in meta["ranks"]}) == 2  # where each rank ran: two processes
    assert results["train"][role]["world_size"] == 2


@pytest.mark.parametrize("role", [BACKTEST, SERVING])
def test_ranks_read_disjoint_shards_covering_the_table_each_epoch(spark, pipeline_run, role):
    from lakerec import snapshot

    cfg, results = pipeline_run
    model_dir = _model_dir(cfg, results, role)
    inputs = TrainInputs.load(model_dir / INPUTS_FILE)
    history = json.loads((model_dir / META_FILE).read_text())["history"]
    # backtest: the train split; serving: every split's positives, as of the night
    examples = snapshot.Snapshot.load(spark, cfg, PIPELINE_DS).read(spark, cfg, snapshot.examples_table(role)).count()
    if role == BACKTEST:
        assert examples == results["features"].training_examples
    assert len(history) == cfg.train.epochs
    for epoch in history:
        assert all(n > 0 for n in epoch["rank_rows"])
        assert sum(epoch["rank_rows"]) == inputs.total_rows == examples
        # ranks step in lockstep until the longest shard is done: the step count bench/bench_gpu.py divides by
        assert epoch["steps"] == max(math.ceil(n / cfg.train.batch_size) for n in epoch["rank_rows"])
        assert epoch["seconds"] > 0


def test_a_rerun_returns_the_finished_model_without_rewriting_it(spark, pipeline_run):
    from lakerec import train

    cfg, results = pipeline_run
    model_dirs = {role: _model_dir(cfg, results, role) for role in (BACKTEST, SERVING)}
    before = {role: {p.name: p.stat().st_mtime_ns for p in d.iterdir()} for role, d in model_dirs.items()}
    assert train.run(spark, cfg, PIPELINE_DS) == {
        role: json.loads((d / META_FILE).read_text()) for role, d in model_dirs.items()}
    assert {role: {p.name: p.stat().st_mtime_ns for p in d.iterdir()} for role, d in model_dirs.items()} == before
    assert results["train"][SERVING]["ds"] == results["train"][BACKTEST]["ds"] == PIPELINE_DS


@pytest.mark.parametrize("role", [BACKTEST, SERVING])
def test_model_records_its_inputs(pipeline_run, role):
    from lakerec.snapshot import examples_table

    cfg, results = pipeline_run
    model_dir = _model_dir(cfg, results, role)
    meta = json.loads((model_dir / META_FILE).read_text())
    inputs = TrainInputs.load(model_dir / INPUTS_FILE)
    examples = examples_table(role).qualified
    assert meta["model_version"] == results["train"][role]["model_version"] == model_dir.name
    assert meta["table_version"] == inputs.table_version == meta["input_versions"][examples]
    assert set(meta["input_versions"]) >= {examples, "silver.id_map_users", "silver.id_map_items"}
    assert meta["history"][-1]["loss"] < meta["history"][0]["loss"]
    assert inputs.train["recency_decay"] == DEFAULT_RECENCY_DECAY  # resolved for the temporal split it trained on
    assert meta["train"]["recency_decay"] == DEFAULT_RECENCY_DECAY
    assert inputs.train["history_decay"] == meta["train"]["history_decay"] == DEFAULT_HISTORY_DECAY
    assert (model_dir / "factors.npz").is_file()
    assert checkpoint_paths(model_dir)[-1].name == f"epoch-{cfg.train.epochs - 1:04d}.pt"


COLD_MOVIES = [  # listed in movies.csv, never rated: items without a training example
    '9001,Cold Twin One (2001),Comedy|Drama',
    '9002,Cold Twin Two (2001),Comedy|Drama',
    '9003,Cold Loner (1975),Horror',
]


@pytest.mark.slow
def test_two_tower_trains_with_early_stopping_and_scores_cold_items_by_content(spark, source_copy, tmp_path):
    import numpy as np

    from conftest import make_config
    from lakerec import features, ingest, tables, train
    from lakerec.model_store import FACTORS_FILE, SIDE_FEATURES_FILE
    from lakerec.models import FactorModel

    with (source_copy / "movies.csv").open("a") as fh:
        fh.write("\n".join(COLD_MOVIES) + "\n")
    cfg = make_config(tmp_path, source_copy, "train.model=two_tower", "train.epochs=6", "train.patience=1",
                      "features.val_fraction=0.2", "embed.enabled=false", "train.launcher=in_process")
    ingest.run(spark, cfg, "2026-01-01")
    features.run(spark, cfg, "2026-01-01")
    # Text vectors for the twins, embedded that night, and for the loner, embedded the night after: a night's
    # side features hold only what was embedded by then.
    text_dim = 8
    planted = [(key.split(",")[0], "hash", "test", [1.0] * text_dim, embedded_ds)
               for key, embedded_ds in zip(COLD_MOVIES, ["2026-01-01", "2026-01-01", "2026-01-02"])]
    tables.overwrite(spark.createDataFrame(planted, tables.ITEM_TEXT_EMBEDDINGS.schema), cfg,
                     tables.ITEM_TEXT_EMBEDDINGS)
    metas = train.run(spark, cfg, "2026-01-01")

    assert all(m["model_version"].startswith("twotower-") for m in metas.values())
    meta = metas[BACKTEST]  # the validation split early-stops the backtest model (serving trains on it too)
    scored = [h["val_ndcg"] for h in meta["history"]]
    assert all(0.0 <= v <= 1.0 for v in scored)
    assert meta["best"]["ndcg"] == max(scored)
    assert len(scored) == cfg.train.epochs or len(scored) - 1 - meta["best"]["epoch"] == cfg.train.patience

    model_dir = latest_model_dir(cfg)  # the serving model
    assert model_dir.name == metas[SERVING]["model_version"]
    factors = FactorModel.load(model_dir / FACTORS_FILE)
    with np.load(model_dir / SIDE_FEATURES_FILE) as side:
        trained, item_side = side["trained_items"], side["item_side"]
    assert factors.item_factors.shape[0] == item_side.shape[0]
    ids = {r["key"]: r["idx"] for r in tables.read(spark, cfg, tables.ID_MAP_ITEMS).collect()}
    one, two, loner = (ids[line.split(",")[0]] for line in COLD_MOVIES)
    assert not trained[[one, two, loner]].any()
    text = item_side[:, -text_dim:]
    assert np.all(text[[one, two]] == 1.0) and not text[loner].any()
    # Cold items have no id part and no bias: their vector comes from content alone, so equal
    # content gives equal vectors, and other content another one.
    assert np.all(factors.item_bias[[one, two, loner]] == 0)
    assert np.array_equal(item_side[one], item_side[two])
    assert np.allclose(factors.item_factors[one], factors.item_factors[two])
    assert not np.allclose(factors.item_factors[one], factors.item_factors[loner])


def test_full_and_sampled_softmax_for_both_models():
    """``model(users)`` scores every item; the full and the sampled softmax against hand-made logits."""
    import math

    import torch

    from lakerec.models import MatrixFactorization, TwoTower, softmax_loss

    torch.manual_seed(0)
    users, pos = torch.tensor([0, 3, 3]), torch.tensor([5, 1, 6])
    catalogue = torch.arange(7).expand(3, 7)
    for model in (MatrixFactorization(4, 7, 8), TwoTower(4, 7, 8, torch.rand(4, 3), torch.rand(7, 5), hidden=6).eval()):
        scores = model(users)
        assert scores.shape == (3, 7)
        assert torch.allclose(scores, model(users, catalogue), atol=1e-6)
        assert torch.allclose(model(users, torch.tensor([6, 2])), scores[:, [6, 2]], atol=1e-6)
        expected = -(scores.log_softmax(-1)[torch.arange(3), pos])
        assert torch.allclose(softmax_loss(model, model.user_vectors(users), pos), expected)
        # Sampling every item once is the full softmax: the correction is log(7/7) = 0 and each
        # positive's own draw is masked, so it is counted once.
        assert torch.allclose(softmax_loss(model, model.user_vectors(users), pos, torch.arange(7), 7), expected, atol=1e-6)
        # Fewer draws: the negatives' logits are raised by log(n_items / draws).
        draws = torch.tensor([2, 4])
        logits = torch.cat([scores[torch.arange(3), pos][:, None], scores[:, draws] + math.log(7 / 2)], 1)
        assert torch.allclose(softmax_loss(model, model.user_vectors(users), pos, draws, 7), -logits.log_softmax(-1)[:, 0])


def test_user_history_adds_the_weighted_mean_of_the_users_items_and_leaves_the_target_out():
    """user vector = id embedding + weighted mean of history item embeddings; training leaves each row's item out."""
    import numpy as np
    import torch

    from lakerec.models import FactorModel, MatrixFactorization, Objective

    torch.manual_seed(0)
    model = MatrixFactorization(3, 6, 4)
    model.set_history(torch.tensor([2, 0, 0, 0]), torch.tensor([3, 1, 2, 5]), torch.tensor([1.0, 1.0, 2.0, 0.5]))
    item, user = model.item.weight.detach(), model.user.weight.detach()
    vectors = model.user_vectors(torch.tensor([0, 1, 2])).detach()
    assert torch.allclose(vectors[0], user[0] + (item[1] + 2 * item[2] + 0.5 * item[5]) / 3.5)
    assert torch.allclose(vectors[1], user[1])  # no history: the id embedding alone
    assert torch.allclose(vectors[2], user[2] + item[3])
    left_out = model.user_vectors(torch.tensor([0, 0]), (torch.tensor([2, 5]), torch.tensor([2.0, 0.5]))).detach()
    assert torch.allclose(left_out[0], user[0] + (item[1] + 0.5 * item[5]) / 1.5)
    assert torch.allclose(left_out[1], user[0] + (item[1] + 2 * item[2]) / 3.0)
    # The exported factors carry the whole history, so the scorer needs nothing else.
    assert np.allclose(FactorModel.from_mf(model).user_factors, vectors.numpy(), atol=1e-6)
    # Training: the loss sees the left-out vector, and the history items' embeddings get gradients.
    objective = Objective(model, None, rating_weight=0.0)
    loss, _ = objective(torch.tensor([0]), torch.tensor([2]), "softmax", history_weights=torch.tensor([2.0]))
    expected = -model.score(left_out[:1]).log_softmax(-1)[0, 2]
    assert torch.isclose(loss, expected)
    loss.backward()
    assert model.item.weight.grad[1].abs().sum() > 0 and model.item.weight.grad[5].abs().sum() > 0
    # The padding row of a rank whose shard is done (user 0, item 0, weight 0) leaves the history whole.
    padding, _ = objective(torch.tensor([0]), torch.tensor([0]), "softmax", history_weights=torch.tensor([0.0]))
    assert torch.isclose(padding, -model.score(vectors[:1]).log_softmax(-1)[0, 0])


def test_recency_weights_make_the_ranking_loss_a_weighted_mean():
    """Uniform weights change nothing; a zero weight removes a row from the loss."""
    import torch

    from lakerec.models import MatrixFactorization, Objective, softmax_loss

    torch.manual_seed(0)
    model = MatrixFactorization(4, 7, 8)
    objective = Objective(model, None, rating_weight=0.0)
    users, pos = torch.tensor([0, 3, 3]), torch.tensor([5, 1, 6])
    per_row = softmax_loss(model, model.user_vectors(users), pos).detach()
    for loss in ("softmax", "bpr"):
        neg = torch.tensor([2, 2, 2]) if loss == "bpr" else None
        plain = objective(users, pos, loss, neg)[0]
        assert torch.isclose(objective(users, pos, loss, neg, weights=torch.full((3,), 0.4))[0], plain)
    weighted = objective(users, pos, "softmax", weights=torch.tensor([1.0, 3.0, 0.0]))[0]
    assert torch.isclose(weighted, (per_row[0] + 3 * per_row[1]) / 4)
    assert torch.isclose(weighted, objective(users[:2], pos[:2], "softmax", weights=torch.tensor([1.0, 3.0]))[0])


def test_cosine_learning_rate_decays_from_lr_by_epoch_alone():
    from lakerec.config import TrainConfig
    from lakerec.trainer import learning_rate

    tc = TrainConfig(lr=0.01, epochs=4)
    rates = [learning_rate(tc, e) for e in range(tc.epochs)]
    assert rates[0] == 0.01 and all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert abs(rates[2] - 0.005) < 1e-12  # half-way: half the rate
    assert learning_rate(TrainConfig(lr=0.01, lr_schedule="constant"), 3) == 0.01


def test_rating_head_adds_its_squared_error_and_learns_ratings_the_biases_alone_cannot():
    """Objective = ranking loss + weight x MSE over rated rows; trained, the head fits rating structure."""
    import torch

    import numpy as np

    from lakerec.models import FactorModel, MatrixFactorization, Objective, RatingHead, RatingPredictor, softmax_loss

    torch.manual_seed(0)
    n_users, n_items = 40, 30
    model, head = MatrixFactorization(n_users, n_items, 8), RatingHead(n_users, n_items, 8, mean=3.0)
    objective = Objective(model, head, rating_weight=0.5)
    users, items = torch.arange(n_users).repeat_interleave(n_items), torch.arange(n_items).repeat(n_users)
    taste = torch.randn(n_users, 2) @ torch.randn(2, n_items)  # a rank-2 pattern: biases cannot fit it
    ratings = (3.0 + taste).flatten()
    ratings[::7] = float("nan")  # unrated rows: ignored by the head

    total, mse = objective(users, items, "softmax", ratings=ratings)
    rated = ~ratings.isnan()
    assert torch.isclose(mse, (3.0 - ratings[rated]).pow(2).mean())  # a fresh head predicts the mean
    assert torch.isclose(total, softmax_loss(model, model.user_vectors(users), items).mean() + 0.5 * mse)
    assert torch.equal(objective(users, items, "softmax")[1], torch.tensor(0.0))  # no ratings, no head loss

    optimizer = torch.optim.Adam(objective.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        objective(users, items, "softmax", ratings=ratings)[0].backward()
        optimizer.step()
    with torch.no_grad():
        fitted = objective(users, items, "softmax", ratings=ratings)[1]
    # The best user + item bias fit of the full matrix leaves the interaction part of the pattern.
    interaction = taste - taste.mean(1, keepdim=True) - taste.mean(0, keepdim=True) + taste.mean()
    assert fitted < 0.25 * interaction.pow(2).mean()

    # The exported form that evaluation predicts with gives the head's own predictions.
    predictor = RatingPredictor.from_head(head)
    with torch.no_grad():
        expected = head(model.user_vectors(users), model.item_vectors(items), users, items).numpy()
    assert np.allclose(predictor.predict(FactorModel.from_mf(model), users.numpy(), items.numpy()), expected, atol=1e-5)


def test_another_training_config_gets_its_ownmodel_version():
    """Retraining a day with other settings must not write into the folder LATEST points to."""
    from lakerec.config import load_config
    from lakerec.model_store import BACKTEST, SERVING, model_version

    base = model_version(load_config("local"), "2026-01-01", SERVING, 3)
    assert base.startswith("mf-serving-2026-01-01-t3-")
    assert model_version(load_config("local"), "2026-01-01", BACKTEST, 3).startswith("mf-backtest-2026-01-01-t3-")
    assert model_version(load_config("local", overrides=["train.dim=128"]), "2026-01-01", SERVING, 3) != base
    # keys a run may change and still resume from its checkpoints keep the folder
    resumable = load_config("local", overrides=["train.epochs=30", "train.max_restarts=0"])
    assert model_version(resumable, "2026-01-01", SERVING, 3) == base


@pytest.mark.parametrize("ranks_on, launcher, on_executors", [("auto", "torch_distributor", False),
                                                              ("executors", "torch_distributor", True),
                                                              ("driver", "torch_distributor", False),
                                                              ("auto", "torchrun", False)])
def test_ranks_go_to_the_executors_on_a_cluster_master_or_when_asked(spark, tmp_path, ranks_on, launcher, on_executors):
    cfg = load_config("local", overrides=[f"train.ranks_on={ranks_on}", f"train.launcher={launcher}"])
    assert spark.sparkContext.master.startswith("local")  # auto: a local master keeps the ranks on this node
    place = Placement.of(spark, cfg)
    assert place.on_executors is on_executors and place.use_gpu is False
