# MediScale: `make run` sets everything up and runs the main job; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= artifacts
PATIENTS ?= 3000
SEED ?= 0

# Absolute: Ray workers and Serve replicas do not share this shell's working directory.
export MEDISCALE_DATA_DIR := $(abspath $(DATA_DIR))
export MLFLOW_DISABLE_TELEMETRY := true
# The venv first on PATH: the Ray cluster `make run` starts then runs `python` (Ray Job entrypoints
# such as `ray job submit -- python -m monitor decide`) with this project's interpreter.
export PATH := $(abspath $(BIN)):$(PATH)
# Logical CPUs of the local cluster `serve run` starts. The replicas reserve about 1.9 CPUs while
# mostly idle, so on a 2-core machine a retraining Ray Job (`monitor watch`) would wait forever;
# 4 lets one run beside the service (it shares the cores).
RAY_CPUS ?= 4
MODELS := $(DATA_DIR)/models
TABULAR_METRICS := $(MODELS)/tabular_metrics.json
# The opaque note model (`python -m ml train-notes --task readmission ...`) is not part of
# `make run`: the note reaches the served risk through its concepts (data/concepts.py), which the
# tabular model reads. `make note-models` trains it for a variant that names a `note:` model.
NOTE_ARGS := --task readmission --features $(DATA_DIR)/features --register --sample 256 --epochs 1 \
	--max-length 128 --head-tokens 32 --cpus-per-worker 2 --n-boot 200
# A local development key (role admin), created once by `make run` and kept in the data dir, readable
# by its owner only. Every endpoint but /healthz needs a key (python -m serve keys ...).
DEV_KEY := $(DATA_DIR)/dev-api-key
# The auth gate in Serve's proxy: a refused request never reaches a replica (serve/gate.py).
SERVE_ENV := RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.gate:proxy_middlewares RAY_OVERRIDE_RESOURCES='{"CPU": $(RAY_CPUS)}'
# What `monitor` and the benchmarks send to the service: your MEDISCALE_API_KEY, else the dev key.
CLIENT_KEY := MEDISCALE_API_KEY=$${MEDISCALE_API_KEY:-$$(cat $(DEV_KEY) 2>/dev/null)}
CURL_EXAMPLE := curl -s localhost:8000/predict -H "authorization: Bearer $$(cat $(DEV_KEY))" -H 'content-type: application/json' \
	-d '{"age": 67, "blood_pressure": 140, "prior_admissions_365d": 2, "clinical_note": "Reports chest pain at discharge. Lives alone."}'

.PHONY: run models note-models serve venv data test test-fast lint format bench-data bench-tabular bench-behaviour bench-choices bench-decisions bench-drift monitor-report monitor-decide monitor-drift monitor-watch bench-text bench-note bench-tune bench-serve tune clean \
	render deploy-check image image-gpu
REGISTRY ?= registry.example.com
RAY_VERSION := $(shell sed -n 's/^ARG RAY_VERSION=//p' Dockerfile)

# The main job: data, a champion and a challenger of both models, then the service.
run: models $(DEV_KEY)
	$(BIN)/python -m ml registry list
	@echo "Your local development API key (role admin), kept in $(DEV_KEY) (mode 600):"
	@echo "  $$(cat $(DEV_KEY))"
	@echo "Serving on http://localhost:8000 (docs: /docs). Try:"
	$(info   $(CURL_EXAMPLE))
	@echo "Monitoring page: http://localhost:8000/dashboard (user name: anything, password: the key)"
	MEDISCALE_API_KEY=$$(cat $(DEV_KEY)) $(SERVE_ENV) $(BIN)/serve run serve/config.yaml

models: $(TABULAR_METRICS) $(MODELS)/tabular_challenger.json

serve: venv $(DEV_KEY)
	MEDISCALE_API_KEY=$$(cat $(DEV_KEY)) $(SERVE_ENV) $(BIN)/serve run serve/config.yaml

# Only the key's hash is stored (in the prediction store's `api_keys`); the key itself only here.
$(DEV_KEY): | venv
	umask 077 && $(BIN)/python -m serve keys create --role admin --name local-dev-$$(date +%s) --quiet > $@.tmp
	mv $@.tmp $@

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
# the first version becomes champion (approval: bootstrap), later ones wait for `ml registry approve`.
$(TABULAR_METRICS): $(DATA_DIR)/features/manifest.json
	$(BIN)/python -m ml train-tabular --features $(DATA_DIR)/features --register --metrics-out $@ --n-boot 500

# Second configurations, approved as challengers (champion stays until `ml registry promote`).
# Registering never exposes a model: the second one is approved here, by name, as a person would
# (`ml registry approve`, recorded in the registry and the audit table), to start the experiment.
$(MODELS)/tabular_challenger.json: $(TABULAR_METRICS)
	$(BIN)/python -m ml train-tabular --features $(DATA_DIR)/features --register --metrics-out $@.tmp --n-boot 500 \
		--max-depth 3 --learning-rate 0.1 --scale-pos-weight auto
	$(BIN)/python -m ml registry approve readmission-tabular \
		$$($(BIN)/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["registered"]["version"])' $@.tmp) \
		--by "make run (local development)" --reason "the demo's second configuration, on synthetic data"
	mv $@.tmp $@

note-models: $(MODELS)/notes_metrics.json $(MODELS)/notes_challenger.json

$(MODELS)/notes_metrics.json: $(TABULAR_METRICS)
	$(BIN)/python -m ml train-notes $(NOTE_ARGS) --learning-rate 5e-5 --metrics-out $@

$(MODELS)/notes_challenger.json: $(MODELS)/notes_metrics.json
	$(BIN)/python -m ml train-notes $(NOTE_ARGS) --learning-rate 1e-4 --metrics-out $@.tmp
	$(BIN)/python -m ml registry approve readmission-notes \
		$$($(BIN)/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["registered"]["version"])' $@.tmp) \
		--by "make note-models (local development)" --reason "the demo's second configuration, on synthetic data"
	mv $@.tmp $@

test: venv
	$(BIN)/pytest

# The edit-loop tier: no Ray cluster, no slow tests (about 2 minutes).
test-fast: venv
	$(BIN)/pytest -m "not ray and not slow" -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-data: venv
	$(BIN)/python bench/data_pipeline.py --json bench/results/data_pipeline.json

tune: data
	$(BIN)/python -m tune xgboost --features $(DATA_DIR)/features --num-samples 16 --json-out $(DATA_DIR)/models/tune_xgboost.json

bench-tune: venv
	$(BIN)/python bench/tune_xgboost.py --json bench/results/tune_xgboost.json

bench-serve: venv
	$(BIN)/python bench/serve_load.py --json bench/results/serve_load.json

bench-text: venv data
	$(BIN)/python bench/text_train.py --json bench/results/text_train.json
	$(BIN)/python bench/text_tasks.py --json bench/results/text_tasks.json

# Note-model inference runtimes (torch fp32, int8, ONNX Runtime) on the registered champion (run alone).
bench-note: venv data
	$(BIN)/python bench/note_inference.py --data-dir $(DATA_DIR) --features $(DATA_DIR)/features \
		--json bench/results/note_inference.json

# The served answer: behaviour needs a running service (make run); the others train or read data.
URL ?= http://localhost:8000
bench-behaviour: venv
	$(CLIENT_KEY) $(BIN)/python bench/behaviour.py --url $(URL) --json bench/results/behaviour_default_routing.json

# Error rates of the champion/challenger rule by simulation (about 4 minutes; run it alone).
bench-decisions: venv
	$(BIN)/python bench/decisions.py --json bench/results/decisions.json

# Against the prediction store of `make run` (and its service on :8000 for the weights).
monitor-report: venv
	$(CLIENT_KEY) $(BIN)/python -m monitor report

monitor-decide: venv
	$(CLIENT_KEY) $(BIN)/python -m monitor decide

# Drift of a variant's traffic against its model's training reference (Evidently report + JSON).
VARIANT ?= champion
monitor-drift: venv
	$(BIN)/python -m monitor drift --variant $(VARIANT) --json $(DATA_DIR)/monitoring/drift-$(VARIANT).json \
		--html $(DATA_DIR)/monitoring/drift-$(VARIANT).html

# One pass of drift-triggered retraining (never promotes); RUNNER=job submits Ray Jobs to RAY_ADDRESS.
RUNNER ?= local
monitor-watch: venv
	$(CLIENT_KEY) $(BIN)/python -m monitor watch --runner $(RUNNER)

# Drift detection rate against sample size per synthetic shift, and the false-alarm rate (run it alone).
bench-drift: venv
	$(BIN)/python bench/drift.py --json bench/results/drift.json

bench-choices: venv data
	$(BIN)/python bench/tabular_choices.py --features $(DATA_DIR)/features --json bench/results/tabular_choices.json

bench-tabular: venv
	$(BIN)/python bench/tabular_train.py --json bench/results/tabular_train.json
	$(BIN)/python bench/tabular_uci.py --json bench/results/tabular_uci.json

render: venv
	$(BIN)/python kuberay/render.py

deploy-check: venv
	$(BIN)/python kuberay/render.py --check
	$(BIN)/python -m kuberay.checks

image:
	docker build -t $(REGISTRY)/mediscale:$(RAY_VERSION) .

image-gpu:
	docker build -t $(REGISTRY)/mediscale:$(RAY_VERSION)-gpu --build-arg RAY_VARIANT=-gpu --build-arg TORCH_INDEX_URL= .

clean:
	rm -rf $(DATA_DIR)
