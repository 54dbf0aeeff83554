# fedpress: `make demo` and `make test` set everything up from nothing (see scripts/setup.sh).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-fedsz test lint bench clean

setup:
	@bash scripts/setup.sh

# the simulator: Fashion-MNIST CNN, 4 clients, raw vs FedSZ (SZ2) vs SZ3 vs fpz at 10 Mbps
demo: setup
	$(BIN)/fedpress compare --dataset fashion-mnist --model cnn --clients 4 --rounds 3 \
	    --local-steps 100 --plans none,fedsz,sz3,fpz --eb 1e-2 --uplink-mbps 10 \
	    --downlink-mbps 10 --threads 2 --out out/demo

# the earlier demo: one model trained centrally, FedSZ on its state dict at 3 bounds
demo-fedsz: setup
	$(BIN)/python -m fedpress.demo

test: setup lint
	bash scripts/run_tests.sh

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_codecs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
