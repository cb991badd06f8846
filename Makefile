# Two commands do all the set-up on a fresh machine with Python 3.11: `make demo`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test lint image-test bench bench-quick bench-unseen bench-export clean

install: $(STAMP)

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/python -m job.synthetic demo-output/data --tickets 400
	$(BIN)/finetune-job run --config demo/config.yaml
	$(BIN)/python -m job.demo --config demo/config.yaml

lint: $(STAMP)
	$(BIN)/ruff format --check job tests
	$(BIN)/ruff check job tests
	$(BIN)/mypy

# Two workers (pytest-xdist), each pinned to its own share of the cores (tests/conftest.py), so the model
# runs they start do not fight over the same cores; a module with a costly shared fixture runs on one
# worker (conftest's scheduler); the 20 slowest tests are listed at the end.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --durations=20

# image-test: build Dockerfile.cpu for real (buildah) and run the image (podman) against a loopback S3
# server: tests/image/build_and_run.py. Needs root and a Debian mirror; installs buildah, podman, runc and
# debootstrap when missing. The base image, the wheelhouse and the layers are cached in IMAGE_CACHE
# (7.7 GB after one build, growing ~1.8 GB per revision built; delete it to start over).
# From an empty cache on 2 idle cores about 9 min: tools 12 s, base image 1 min, wheels 36 s, build
# 4 min, containers 3 min (much longer on a loaded machine). .ci/run calls it after `make test`.
IMAGE_CACHE ?= $(HOME)/.cache/finetune-image
image-test: $(STAMP)
	FINETUNE_IMAGE_CACHE=$(IMAGE_CACHE) $(BIN)/python -m tests.image.build_and_run

clean:
	rm -rf demo-output .pytest_cache .mypy_cache .ruff_cache

# The job vs the v4 notebook approach, side by side on this machine (bench/README.md).
# bench: real dev data, ~25-45 min on 2 cores (longer on a busy machine); results committed under bench/results/
$(VENV)/.bench-installed: $(STAMP) requirements-bench.lock
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-bench.lock
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench.run_bench --dataset dev --results bench/results

# bench-quick: the same harness on the 333-ticket sample in under 5 minutes (results stay in bench/work/).
bench-quick: $(VENV)/.bench-installed
	$(BIN)/python -m bench.run_bench --dataset sample --results bench/work/quick-results

# bench-unseen: leave one project out on dev; recipes chosen on val, tested on the held-out project.
# Hours on 2 cores; resumes where it stopped (runs appended to bench/results/unseen-dev-runs.jsonl).
bench-unseen: $(VENV)/.bench-installed
	$(BIN)/python -m bench.unseen --dataset dev --out bench/results

# bench-export: the job's CPU export (export.onnx) on dev: PyTorch fp32 vs ONNX fp32 vs ONNX int8, encode
# rate and held-out metrics (offline MiniLM, 128 tokens). About 5 min on an idle 2-core machine.
bench-export: $(STAMP)
	test -f bench/work/runs/dev-split/steps/prepare.json || \
	  $(BIN)/finetune-job prepare --config bench/dev-split.json --run-id dev-split
	$(BIN)/python -m bench.encode_backends --run-dir bench/work/runs/dev-split --job-export \
	  --quality-length 128 --speed-texts 128 --rounds 2 --out bench/results
