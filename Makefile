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
	$(BIN)/pip install --quiet -e ".[dev,transformers]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/nas-mpq run --config configs/shakespeare_lstm/quick.yaml --run_dir $(RUN_DIR)

test: setup  # the import contracts of pyproject.toml first: a cycle or an upward import fails
	$(BIN)/lint-imports --no-cache --no-logo
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

# the allocator benchmark on the ledgers of the tables "From the averaged FP32 model" and "The Transformer from the
# unigram-bias FP32 model" (lstm-v4 and transformer-v4 were made on one thread)
LSTM_V3 := $(BIN)/python benchmarks/allocators.py --configs configs/shakespeare_lstm --pretrain pretrain_averaged --run_dir runs/alloc/lstm-v3 --ledger benchmarks/results/allocators-lstm-v3.json
LSTM_V4 := OMP_NUM_THREADS=1 $(BIN)/python benchmarks/allocators.py --configs configs/shakespeare_lstm --pretrain pretrain_averaged --run_dir runs/alloc/lstm-v4 --ledger benchmarks/results/allocators-lstm-v4.json
TRANSFORMER_V3 := $(BIN)/python benchmarks/allocators.py --configs configs/shakespeare_transformer --pretrain pretrain_averaged --run_dir runs/alloc/transformer-v3 --ledger benchmarks/results/allocators-transformer-v3.json
TRANSFORMER_V4 := OMP_NUM_THREADS=1 $(BIN)/python benchmarks/allocators.py --configs configs/shakespeare_transformer --pretrain pretrain_prior --run_dir runs/alloc/transformer-v4 --ledger benchmarks/results/allocators-transformer-v4.json

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/overhead.py --space transformer_lm
	$(BIN)/python benchmarks/overhead.py --space cnn
	$(BIN)/python benchmarks/hessian.py
	$(BIN)/python benchmarks/quality.py --budgets 2.0 1.032 --methods ste admm
	$(BIN)/python benchmarks/quality.py --configs configs/shakespeare_transformer --run_dir runs/bench-transformer --methods ste
	$(BIN)/python benchmarks/quality.py --configs configs/digits_cnn --run_dir runs/bench-cnn --budgets 2.0 1.2 --methods ste
	$(BIN)/python benchmarks/bitops.py
	# the allocator tables of those sections (kept runs restored from the ledgers, the rest
	# trained), then each ledger's whole table (allocators.json, allocators.png) from its finished runs
	$(LSTM_V3) --budgets 2.0 --arms uniform kl hessian random nas_hessian_short fp32_continued
	$(LSTM_V4) --budgets 2.0 --arms uniform kl hessian random nas_hessian_fast fp32_continued
	$(LSTM_V4) --budgets 1.5 --arms kl hessian random nas_hessian_short nas_hessian_fast
	$(LSTM_V4) --budgets 2.0 1.5 --arms uniform kl hessian random nas_hessian_short nas_hessian_fast fp32_continued --report_only
	$(TRANSFORMER_V3) --budgets 2.0 1.5 --arms uniform kl hessian random nas_hessian_short fp32_continued
	$(TRANSFORMER_V3) --budgets 1.5 --arms nas_hessian_kp nas_hessian_fast
	$(TRANSFORMER_V3) --budgets 2.0 1.5 --arms uniform kl hessian random nas_hessian_short nas_hessian_kp nas_hessian_fast fp32_continued --report_only
	$(TRANSFORMER_V4) --budgets 2.0 1.5 --arms uniform kl hessian random nas_hessian_fast fp32_continued --seeds 0 1 2 3 4

clean:  # never runs/: it holds users' results
	rm -rf $(VENV) .pytest_cache
