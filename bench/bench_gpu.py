"""GPU checks of #5 and #6: the trainer on a GPU node through Petastorm, and the scoring bound on it.

GPU trainer nodes have torch but no JVM and no Spark, so this runs in two steps:

    make bench-gpu-bundle        # here, with Spark: writes gpu_bundle/ (ignored by git)
    # on the GPU node, in a copy of the repo holding gpu_bundle/:
    mkdir -p /tmp/site && tar -xJf gpu_bundle/site.tar.xz -C /tmp/site   # where petastorm's stack is missing
    PYTHONPATH=/tmp/site:lib:bench python3 bench/bench_gpu.py run --out gpu.json

``bundle`` writes two sets of training inputs, each an ``inputs.json`` beside the parquet files of
the pinned Delta version it names: ``mls`` (ml-latest-small through ingest -> features -> train
prepare, as ``make run`` builds it) and ``synthetic`` (``--rows``
examples in the features job's layout, as ``make bench-train`` writes them).

``run`` trains each with ``torchrun --nproc_per_node=1 -m lakerec.train`` (one rank, bf16
autocast), sampling GPU utilisation while it runs, and reports the step time (epoch seconds / steps
from meta.json), the compute-only step time of the same model on in-memory batches, the Petastorm
loader and raw pyarrow rows/s on that node, and (c) of ``make bench-score`` on the GPU:
``top_n_block`` over the MovieLens 25M shape. It leaves the ml-latest-small model in ``mls_model/``
beside ``--out``; ``evaluate mls_model`` (here, with Spark) scores it on the test split beside a
model trained here. ``sweep`` times the synthetic set by Petastorm reader threads, bf16 vs fp32.
Without a GPU the same commands run on the CPU (a smoke test; no utilisation samples).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from bench_train import loader_pass, machine, raw_pass
from lakerec.config import TrainConfig, load_config
from lakerec.data import count_rows, read_columns
from lakerec.model_store import (BACKTEST, FACTORS_FILE, INPUTS_FILE, META_FILE, RATING_HEAD_FILE, TrainInputs,
                                 resolved_train)
from lakerec.models import Objective, top_n_block
from lakerec.synthetic import ML25M_ITEMS, ML25M_USERS, random_factors
from lakerec.trainer import build_model, build_rating_head, load_history

BUNDLE = Path(__file__).resolve().parents[1] / "gpu_bundle"
log = logging.getLogger("bench_gpu")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _pack(inputs: TrainInputs, dest: Path, **train: object) -> None:
    """Copy the pinned files (and validation set) into ``dest``; inputs.json names them relative to it."""
    dest.mkdir(parents=True)
    names = []
    for i, f in enumerate(inputs.files):
        names.append(f"part-{i:05d}.parquet")
        shutil.copy(f.removeprefix("file:"), dest / names[-1])
    if inputs.validation:
        shutil.copy(inputs.validation, dest / "validation.npz")
    packed = replace(inputs, files=names, model_dir="", validation="validation.npz" if inputs.validation else None,
                     train={**inputs.train, **train})
    packed.save(dest / INPUTS_FILE)


def bundle(dest: Path, rows: int, users: int, items: int, batch_size: int, epochs: int) -> None:
    """Write ``dest``/mls and ``dest``/synthetic with Spark (this machine)."""
    from bench_train import write_examples
    from lakerec import features, ingest, train
    from lakerec.spark import build_spark

    shutil.rmtree(dest, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        cfg = load_config("local", overrides=[f"warehouse={tmp}/warehouse", f"models_dir={tmp}/models",
                                              "train.launcher=none", f"spark.conf={{spark.local.dir: '{tmp}'}}"])
        spark = build_spark(cfg)
        ds = "2026-01-01"
        ingest.run(spark, cfg, ds)
        features.run(spark, cfg, ds)
        prepared = TrainInputs.load(train.run(spark, cfg, ds)[BACKTEST]["inputs"])  # scored on the test split
        spark.stop()
        # One GPU takes the global batch of the CPU default (num_processes x batch_size).
        _pack(prepared, dest / "mls", batch_size=cfg.train.batch_size * cfg.train.num_processes)

        files, version = write_examples(Path(tmp), rows, users, items, 0)
        synth_cfg = load_config("local", overrides=[f"train.batch_size={batch_size}", f"train.epochs={epochs}"])
        synthetic = TrainInputs("synthetic", "", files, version, count_rows(files), users, items,
                                {"features.training_examples": version},
                                asdict(resolved_train(synth_cfg)), rating_mean=3.0)
        _pack(synthetic, dest / "synthetic")
    log.info("bundle written: %s (%.1f MiB)", dest, sum(f.stat().st_size for f in dest.rglob("*")) / 2**20)


def _localise(packed: Path, work: Path, **train: object) -> Path:
    """inputs.json of ``packed`` with absolute file paths, a model dir under ``work`` and ``train`` overrides."""
    inputs = TrainInputs.load(packed / INPUTS_FILE)
    model_dir = work / packed.name
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    local = replace(inputs, files=[str(packed.resolve() / f) for f in inputs.files], model_dir=str(model_dir),
                    validation=str(packed.resolve() / inputs.validation) if inputs.validation else None,
                    train={**inputs.train, **train})
    local.save(model_dir / INPUTS_FILE)
    return model_dir / INPUTS_FILE


class GpuSampler:
    """GPU utilisation (%) and memory (MiB) every ``interval`` s through NVML, with wall-clock times."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.samples = interval, []
        self._nvml = None
        if torch.cuda.is_available():  # CPU smoke runs of this script take no samples
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self._nvml is not None and not self._stop.is_set():
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            self.samples.append((time.time(), util.gpu, memory.used / 2**20))
            time.sleep(self.interval)

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> dict:
        """Mean and median utilisation and peak memory of the samples taken in [start, end]."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"samples": 0}
        util = [u for u, _ in inside]
        return {"samples": len(inside), "util_mean_pct": round(statistics.mean(util), 1),
                "util_median_pct": statistics.median(util), "memory_peak_mib": round(max(m for _, m in inside))}


def train_on_gpu(packed: Path, work: Path, **train: object) -> dict:
    """torchrun one rank over ``packed``; epoch step times from meta.json, utilisation while training."""
    inputs_path = _localise(packed, work, **train)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "lakerec.train", "--inputs", str(inputs_path)]
    started = time.time()
    with GpuSampler() as sampler:
        subprocess.run(cmd, check=True)
    meta_path = inputs_path.parent / META_FILE
    meta = json.loads(meta_path.read_text())
    train_end = meta_path.stat().st_mtime  # meta.json is written right after the last epoch
    epochs = [{"epoch": h["epoch"], "steps": h["steps"], "seconds": h["seconds"], "rows": h["rows"],
               "step_ms": round(1000 * h["seconds"] / h["steps"], 2), **({"val_ndcg": h["val_ndcg"]} if "val_ndcg" in h else {})}
              for h in meta["history"]]
    steady = epochs[1:] or epochs  # epoch 0 pays CUDA start-up and kernel selection
    return {
        "device": meta["device"], "rows": meta["history"][0]["rows"], "batch_size": meta["train"]["batch_size"],
        "dim": meta["train"]["dim"], "n_items": TrainInputs.load(inputs_path).n_items,
        "wall_seconds_with_startup": round(train_end - started, 1), "train_seconds": meta["train_seconds"],
        "step_ms_median": statistics.median(e["step_ms"] for e in steady),
        "examples_per_s": round(sum(e["rows"] for e in steady) / sum(e["seconds"] for e in steady)),
        "best": meta["best"], "gpu_while_training": sampler.window(train_end - meta["train_seconds"], train_end),
        "epochs": epochs,
    }


def compute_step_ms(packed: Path, steps: int = 50, bf16: bool = True) -> float:
    """The same model and loss on in-memory random batches of the trained batch size: ms per step, no loader."""
    inputs = TrainInputs.load(packed / INPUTS_FILE)
    tc = TrainConfig(**inputs.train)
    device = _device()
    files = [str(packed / f) for f in inputs.files]
    torch.manual_seed(tc.seed)
    model = build_model(inputs, tc)
    if tc.user_history:
        load_history(model, files, tc.history_decay or 0.0)
    head = build_rating_head(inputs, tc)
    objective = Objective(model, head, tc.rating_weight).to(device)
    optimizer = torch.optim.Adam(objective.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n = tc.batch_size
    rows = read_columns(files, ["user_idx", "item_idx"])  # a batch of real rows: heavy users recur, as in training
    pick = torch.randperm(len(rows["user_idx"]))[:n]
    users, items = (torch.from_numpy(rows[c]).long()[pick].to(device) for c in ("user_idx", "item_idx"))
    ratings = torch.rand(n, device=device) * 4 + 1 if head is not None else None
    weights = torch.rand(n, device=device) if tc.recency_decay else None
    history_weights = torch.rand(n, device=device) if tc.user_history and tc.history_decay else None
    sampled = 0 < tc.softmax_negatives < inputs.n_items  # as the trainer decides

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            if sampled:
                shared = torch.randint(0, inputs.n_items, (tc.softmax_negatives,), device=device)
                loss, _ = objective(users, items, "softmax", shared, inputs.n_items, ratings=ratings, weights=weights,
                                    history_weights=history_weights)
            else:
                loss, _ = objective(users, items, "softmax", ratings=ratings, weights=weights, history_weights=history_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return round(1000 * (time.perf_counter() - started) / steps, 3)


def random_seen(n_users: int, n_items: int, mean_seen: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, items) drawn like bench_score's Spark users: long-tailed counts, skewed to popular items."""
    rng = np.random.default_rng(seed)
    floor = min(20, mean_seen)
    lengths = np.minimum(n_items, (floor - np.log(rng.random(n_users)) * (mean_seen - floor)).astype(np.int64))
    items = [np.unique(np.minimum(n_items - 1, (rng.random(k) ** 2 * n_items).astype(np.int64))) for k in lengths]
    return np.array([len(i) for i in items]), np.concatenate(items)


def scoring_bound(block_size: int, top_n: int = 100, dim: int = 64, seed: int = 7) -> dict:
    """(c) of make bench-score on the GPU: top_n_block over every block of the MovieLens 25M shape."""
    model = random_factors(ML25M_USERS, ML25M_ITEMS, dim, seed)
    lengths, seen = random_seen(ML25M_USERS, ML25M_ITEMS, 150, seed)
    device = _device()
    user_f, item_f, bias = (torch.from_numpy(a).to(device) for a in (model.user_factors, model.item_factors, model.item_bias))
    buffer = torch.empty(block_size, ML25M_ITEMS, device=device)
    offsets = np.concatenate([[0], np.cumsum(lengths)])

    def one_pass() -> float:
        started = time.perf_counter()
        for lo in range(0, ML25M_USERS, block_size):
            hi = min(lo + block_size, ML25M_USERS)
            top_n_block(user_f[lo:hi], item_f, bias, lengths[lo:hi], seen[offsets[lo]:offsets[hi]], top_n, buffer)
        return time.perf_counter() - started

    one_pass()  # warm-up: kernels chosen, memory allocated
    seconds = [one_pass() for _ in range(3)]
    return {"users": ML25M_USERS, "items": ML25M_ITEMS, "dim": dim, "top_n": top_n, "block_size": block_size,
            "seen_total": int(len(seen)), "seconds_best": round(min(seconds), 3), "seconds": [round(s, 3) for s in seconds]}


def run(bundle_dir: Path, out: Path) -> None:
    """Everything measured on the GPU node, written to ``out`` as JSON."""
    import pyarrow
    import petastorm

    result: dict = {
        "machine": {**machine(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__,
                    "cuda": torch.version.cuda, "pyarrow": pyarrow.__version__, "numpy": np.__version__,
                    "petastorm": petastorm.__version__},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        for name in ("mls", "synthetic"):
            packed = bundle_dir / name
            log.info("training %s on the GPU", name)
            result[name] = train_on_gpu(packed, Path(work))
            result[name]["compute_only_step_ms"] = compute_step_ms(packed)
            if name == "mls":  # brought back to be evaluated against the test split where Spark runs
                (out.parent / "mls_model").mkdir(exist_ok=True)
                for f in (FACTORS_FILE, RATING_HEAD_FILE):
                    shutil.copy(Path(work) / name / f, out.parent / "mls_model" / f)
            log.info("%s: %s", name, json.dumps({k: v for k, v in result[name].items() if k != "epochs"}))
        files = sorted(str(p) for p in (bundle_dir / "synthetic").glob("*.parquet"))
        columns = ["user_idx", "item_idx", "label"]
        result["loader"] = {
            "rows": count_rows(files), "columns": columns, "batch_size": 65536, "workers": 2,
            "loader_rows_per_s": round(max(loader_pass(files, 65536, 2, e) for e in range(3))),
            "raw_rows_per_s": round(max(raw_pass(files, 2) for _ in range(3))),
        }
        log.info("loader: %s", result["loader"])
    result["scoring_bound"] = [scoring_bound(b) for b in (1024, 8192)]
    log.info("scoring bound: %s", result["scoring_bound"])
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def sweep(bundle_dir: Path, out: Path) -> None:
    """Step time of the synthetic set by Petastorm reader threads; compute-only step in bf16 and fp32."""
    packed = bundle_dir / "synthetic"
    result: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "reader_workers": {},
                    "compute_only_step_ms": {"bf16": compute_step_ms(packed), "fp32": compute_step_ms(packed, bf16=False)}}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        for workers in (1, 2, 4, 8):
            trained = train_on_gpu(packed, Path(work), epochs=2, reader_workers=workers)
            result["reader_workers"][workers] = {k: trained[k] for k in ("step_ms_median", "examples_per_s", "gpu_while_training")}
            log.info("reader_workers=%d: %s", workers, result["reader_workers"][workers])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def evaluate_returned(model_dir: Path, out: Path) -> None:
    """Test-split NDCG@10 and RMSE of the GPU-trained ml-latest-small model beside one trained here (2 gloo ranks)."""
    from lakerec import evaluate, features, ingest, metrics_spark, train
    from lakerec.config import resolve_path
    from lakerec.models import FactorModel
    from lakerec.snapshot import Snapshot
    from lakerec.spark import build_spark

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        cfg = load_config("local", overrides=[f"warehouse={tmp}/warehouse", f"models_dir={tmp}/models",
                                              f"spark.conf={{spark.local.dir: '{tmp}'}}"])
        spark = build_spark(cfg)
        ds = "2026-01-01"
        ingest.run(spark, cfg, ds)
        features.run(spark, cfg, ds)
        cpu_dir = Path(resolve_path(cfg.models_dir)) / train.run(spark, cfg, ds)[BACKTEST]["model_version"]
        inputs = evaluate.load_inputs(spark, cfg, Snapshot.load(spark, cfg, ds))
        result = {}
        for name, directory in (("gpu", model_dir), ("cpu", cpu_dir)):
            recs = evaluate.ranked_lists(inputs.test_users, FactorModel.load(directory / FACTORS_FILE), name, 10, cfg)
            result[name] = {**metrics_spark.ranking_metrics(recs, inputs.test_truth, [10])[10],
                            **(evaluate.model_rating_errors(spark, inputs.silver, cfg, directory) or {})}
        spark.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("bundle", help="write the training inputs with Spark (this machine)")
    make.add_argument("--rows", type=int, default=5_000_000, help="synthetic training examples")
    make.add_argument("--users", type=int, default=100_000)
    make.add_argument("--items", type=int, default=20_000)
    make.add_argument("--batch-size", type=int, default=8192, help="synthetic: examples per GPU step")
    make.add_argument("--epochs", type=int, default=3, help="synthetic: epochs to train")
    go = sub.add_parser("run", help="train and time on the GPU node (no Spark)")
    go.add_argument("--out", type=Path, default=Path("bench/out/gpu.json"))
    tune = sub.add_parser("sweep", help="the synthetic set's step time by reader threads, bf16 vs fp32 (GPU node)")
    tune.add_argument("--out", type=Path, default=Path("bench/out/gpu_sweep.json"))
    check = sub.add_parser("evaluate", help="the model trained on the GPU node vs one trained here, on the test split")
    check.add_argument("model_dir", type=Path, help="the mls_model folder that run wrote beside --out")
    check.add_argument("--out", type=Path, default=Path("bench/out/gpu_quality.json"))
    for p in (make, go, tune, check):
        p.add_argument("--bundle", type=Path, default=BUNDLE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("petastorm").setLevel(logging.WARNING)
    if args.command == "bundle":
        bundle(args.bundle, args.rows, args.users, args.items, args.batch_size, args.epochs)
    elif args.command == "run":
        run(args.bundle, args.out)
    elif args.command == "sweep":
        sweep(args.bundle, args.out)
    else:
        evaluate_returned(args.model_dir, args.out)


if __name__ == "__main__":
    main()
