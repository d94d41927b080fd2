# lakerec: `make run` installs what is missing and runs the nightly pipeline; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DS ?= $(shell date +%F)
ENV ?= local
SCALE ?= 1.0
STAMP := $(VENV)/.installed
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_PINS := apache-airflow==3.3.2 apache-airflow-providers-standard==1.21.0

.PHONY: install run run-cluster wheel test test-fast test-airflow test-e2e bench bench-features bench-score bench-topn bench-metrics bench-train bench-quality bench-replay bench-gpu-bundle clean

install: $(STAMP)

# uv installs from its cache in seconds on a second checkout; petastorm goes in --no-deps
# (it declares setuptools<70, which torch refuses; its real needs are in pyproject.toml).
# pyspark ships only as an sdist, and each install can leave another ~1 GB build of it in uv's cache,
# so the install ends by pruning what no longer resolves (a full disk failed a CI install).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) -e '.[dev,text,mlflow]'
	$(VENV)/bin/uv pip install --python $(PY) --no-deps petastorm==0.13.1
	$(VENV)/bin/uv cache prune --quiet
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m lakerec.pipeline --ds $(DS) --env $(ENV)

# The wheel that spark-submit ships to a cluster (--py-files); it carries conf/ as lakerec/conf.
wheel: $(STAMP)
	rm -rf dist build
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w dist .

# The nightly pipeline on a Spark standalone master + 2 workers on 127.0.0.1, every job through spark-submit
# with the wheel (ENV=smoke: a quick one, as CI runs it); CLUSTER_ARGS adds runner arguments, e.g. --set k=v.
run-cluster: wheel
	$(PY) -m lakerec.standalone --ds $(DS) --env $(ENV) --wheel dist/lakerec-*.whl $(CLUSTER_ARGS)

test: $(STAMP)
	$(PY) -m pytest

# Airflow gets its own virtualenv: its pins clash with the pipeline's. The DAG's tasks spark-submit
# with the pipeline's virtualenv.
$(AIRFLOW_STAMP): $(STAMP)
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(VENV)/bin/uv pip install --python $(AIRFLOW_VENV)/bin/python $(AIRFLOW_PINS)
	touch $(AIRFLOW_STAMP)

# The DAG in a real Airflow 3: DagBag without import errors or deprecation warnings, then one whole
# `airflow dags test` run on the embedded data in local mode (ENV=smoke: a quick one, as CI runs it).
test-airflow: $(AIRFLOW_STAMP)
	$(AIRFLOW_VENV)/bin/python tests/airflow/run_dag.py --pipeline-python $(PY) --ds $(DS) --env $(ENV) \
		--submit-args "--master local[2] $$($(PY) -c 'from lakerec.config import load_config; s = load_config().spark; print("--packages", s.delta_package, "--driver-memory", s.driver_memory)')" \
		$(AIRFLOW_ARGS)

# CI's end-to-end night: one whole DAG run in the real Airflow 3 above, each task spark-submitting
# with the wheel to the standalone cluster of run-cluster, so one night checks both (ENV=smoke in CI).
test-e2e: wheel $(AIRFLOW_STAMP)
	$(PY) -m lakerec.standalone --ds $(DS) --env $(ENV) --wheel dist/lakerec-*.whl --airflow $(AIRFLOW_VENV)/bin/python

# The fast tier for your own loop: unit tests and small Spark tests, no end-to-end or soak tests.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Benchmarks (BENCHMARKS.md). SCALE shrinks the synthetic shapes for a quick run, e.g. SCALE=0.1.
bench: bench-features bench-score bench-topn bench-metrics bench-train bench-quality

# Ingest + features at the MovieLens 25M shape: wall time and peak memory.
bench-features: $(STAMP)
	SCALE=$(SCALE) $(PY) bench/bench_features.py

# Scorer vs Spark ALS vs a bare torch bound at the MovieLens 25M shape.
bench-score: $(STAMP)
	$(PY) bench/bench_score.py --scale $(SCALE) --record BENCHMARKS.md

# The top-N's tie-break at the cut, with and without, on one block at the MovieLens 25M shape.
bench-topn: $(STAMP)
	$(PY) bench/bench_topn_ties.py

# An evaluation's list metrics: one Spark action per cut-off vs every cut-off in one, at the embedded data's shape.
bench-metrics: $(STAMP)
	$(PY) bench/bench_metrics.py

# Petastorm loader vs raw pyarrow (20M training examples x SCALE) vs training (500k x SCALE).
bench-train: $(STAMP)
	$(PY) bench/bench_train.py --scale $(SCALE)

# Model vs popularity / ALS / EASE on ml-100k (from ../shared, or ML100K=path) and ml-latest-small; then cold start.
bench-quality: $(STAMP)
	$(PY) bench/bench_quality.py $(if $(ML100K),--ml100k $(ML100K))
	$(PY) bench/bench_coldstart.py

# ml-latest-small replayed as an initial load + NIGHTS daily drops: next-day hit@10 (served, frozen, popularity), seconds per night.
NIGHTS ?= 7
bench-replay: $(STAMP)
	$(PY) bench/bench_replay.py --nights $(NIGHTS)

# GPU node checks (bench/bench_gpu.py): training inputs written here with Spark + the trainer's data
# stack for CPython 3.12, carried to a node that has torch but no Spark or network.
bench-gpu-bundle: $(STAMP)
	$(PY) bench/bench_gpu.py bundle
	bash bench/gpu_site.sh gpu_bundle

clean:
	rm -rf warehouse models reports spark-warehouse metastore_db derby.log petastorm_cache
