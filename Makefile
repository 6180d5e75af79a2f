# Dataset distillation with diffusion models -- `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# faiss-cpu | faiss-gpu: exactly one build provides the module `faiss` (make install FAISS=faiss-gpu)
FAISS ?= faiss-cpu
STAMP := $(VENV)/.installed-$(FAISS)
QUICKSTART_DIR ?= logs/quickstart/$(shell date +%Y-%m-%d_%H-%M-%S)
# reference experiment jobs run at once, each with cpu_count / N threads (2 x 1 on 2 cores)
REFERENCE_WORKERS ?= 2
# make test runs the test files side by side in this many processes (one per core, at most 4)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

.PHONY: help install lint run test test-full bench data format clean reference reference-extended reference-smoke gpu-check rehearse

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the pinned dependency set (idempotent)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first: `torch==2.13.0` resolves to the local CPU wheel here, the CUDA build elsewhere
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	@# exactly one faiss build: remove the others before installing the chosen one
	$(BIN)/pip uninstall -q -y faiss-cpu faiss-gpu faiss-gpu-cu12 >/dev/null 2>&1 || true
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$(FAISS),dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

run: install ## quick start: random / unguided / MGD^3 on digits, IPC 10, accuracies side by side
	$(BIN)/python run.py -m experiment=quickstart method=random,unguided,mgd3 hydra.sweep.dir=$(QUICKSTART_DIR)
	@$(BIN)/python experiments/summarize.py $(QUICKSTART_DIR) --csv $(QUICKSTART_DIR)/summary.csv

lint: install ## ruff check + ruff format --check (part of make test)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint ## lint, then the fast tests (no network, no GPU), TEST_WORKERS files at a time
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-full: install ## all tests, slow ones included (GPU tests still need a GPU)
	$(BIN)/python -m pytest -q -m "not gpu"

bench: install ## speed benchmarks (numbers go into docs/benchmarks.md)
	$(BIN)/python experiments/bench_sampling.py
	$(BIN)/python experiments/bench_eval.py
	$(BIN)/python experiments/bench_patchsel.py
	$(BIN)/python experiments/bench_manifoldgd.py
	$(BIN)/python experiments/bench_decode.py
	$(BIN)/python experiments/bench_allocator.py
	$(BIN)/python experiments/bench_pool.py

rehearse: install ## paper scale on this CPU: real-size random-weight DiT-XL/2 / SD v1.5, ImageNet-layout JPEGs, ImageNet-1K IPC 50 on 2 ranks -> results/rehearsal/
	$(BIN)/python experiments/rehearse.py

gpu-check: install ## DiT-XL/2 / SD / faiss / DDP at real shapes on the visible GPUs (skips without CUDA)
	$(BIN)/python experiments/gpu_check.py

reference: install ## the reference experiment (digits + Fashion-MNIST, 3 set seeds; resumes; about 2 h on 2 cores) -> results/reference.md
	$(BIN)/python experiments/reference.py --workers $(REFERENCE_WORKERS)

reference-extended: install ## the reference experiment plus the [latent] rows at every IPC (not timed with 3 set seeds)
	$(BIN)/python experiments/reference.py --workers $(REFERENCE_WORKERS) --extended

reference-smoke: install ## a tiny subset of the reference experiment, same code path (CI)
	$(BIN)/python experiments/reference.py --smoke

data: ## install Fashion-MNIST (Debian package dataset-fashion-mnist) where apt exists
	@command -v apt-get >/dev/null || { echo "error: apt-get not found; put the IDX files in a folder and set dataset.root=<dir>"; exit 2; }
	$(if $(shell [ "$$(id -u)" = 0 ] && echo root),,sudo )apt-get install -y dataset-fashion-mnist

format: install ## format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove logs and caches (not the environment)
	rm -rf logs .cache .pytest_cache
