# MediScale: `make run` sets everything up and runs the main job; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= artifacts
PATIENTS ?= 3000
SEED ?= 0

export MEDISCALE_DATA_DIR := $(DATA_DIR)
export MLFLOW_DISABLE_TELEMETRY := true
TABULAR_METRICS := $(DATA_DIR)/models/tabular_metrics.json

.PHONY: run venv data test lint format bench-data bench-tabular clean

run: data $(TABULAR_METRICS)
	@echo "Feature folder: $(DATA_DIR)/features; tabular model test metrics: $(TABULAR_METRICS)"
	$(BIN)/python -m ml registry list

venv: $(VENV)/.installed

# Rebuilt when the dependency list changes; torch is pinned so pip takes the local CPU wheel.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data: $(DATA_DIR)/features/manifest.json

$(DATA_DIR)/raw/manifest.json: | venv
	$(BIN)/python -m data synth --patients $(PATIENTS) --seed $(SEED) --out $(DATA_DIR)/raw --overwrite

$(DATA_DIR)/features/manifest.json: $(DATA_DIR)/raw/manifest.json
	$(BIN)/python -m data features --raw $(DATA_DIR)/raw --out $(DATA_DIR)/features --overwrite

# Trains on Ray Train, logs to MLflow (sqlite in $(DATA_DIR)) and registers the model:
# the first version becomes champion, later ones challenger.
$(TABULAR_METRICS): $(DATA_DIR)/features/manifest.json
	$(BIN)/python -m ml train-tabular --features $(DATA_DIR)/features --register --metrics-out $@ --n-boot 500

test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-data: venv
	$(BIN)/python bench/data_pipeline.py --json bench/results/data_pipeline.json

bench-tabular: venv
	$(BIN)/python bench/tabular_train.py --json bench/results/tabular_train.json
	$(BIN)/python bench/tabular_uci.py --json bench/results/tabular_uci.json

clean:
	rm -rf $(DATA_DIR)
