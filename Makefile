PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/nas-mpq pretrain --config configs/shakespeare_lstm/quick.yaml --run_dir $(RUN_DIR)/pretrain
	$(BIN)/nas-mpq search --config configs/shakespeare_lstm/quick.yaml --run_dir $(RUN_DIR)/search \
		--init_ckpt $(RUN_DIR)/pretrain/model.ckpt

test: setup
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
