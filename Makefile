# lakerec: `make run` installs what is missing and runs the nightly pipeline; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DS ?= $(shell date +%F)
ENV ?= local
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) -e '.[dev,text]'
	$(VENV)/bin/uv pip install --python $(PY) --no-deps petastorm==0.13.1
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m lakerec.pipeline --ds $(DS) --env $(ENV)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf warehouse models reports spark-warehouse metastore_db derby.log

# Scorer vs Spark ALS vs a bare torch bound at the MovieLens 25M shape; SCALE=0.1 for a quick run.
SCALE ?= 1.0
.PHONY: bench-score
bench-score: $(STAMP)
	$(PY) bench/bench_score.py --scale $(SCALE) --record BENCHMARKS.md

# Petastorm loader vs raw pyarrow vs training on 5M training examples (x SCALE); last line: loader_rows_per_s=X raw_rows_per_s=Y.
.PHONY: bench-train
bench-train: $(STAMP)
	$(PY) bench/bench_train.py --scale $(SCALE)
