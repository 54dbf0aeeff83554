# fedpress: `make demo` and `make test` set everything up from nothing (see scripts/setup.sh).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-fedsz test lint bench clean

setup:
	@bash scripts/setup.sh

# the simulator: Fashion-MNIST CNN, 4 clients at 10 Mbps: weights raw vs the FedSZ paper (SZ2)
# vs SZ3 vs fedsz (the same partition on fpz + zstd); then gradients (FedSGD) raw vs EF top-k,
# DGC, QSGD, STC, PowerSGD; then updates raw vs HGC
demo: setup
	$(BIN)/fedpress compare --dataset fashion-mnist --model cnn --clients 4 --rounds 3 \
	    --local-steps 100 --plans none,fedsz-paper,sz3,fedsz --eb 1e-2 --uplink-mbps 10 \
	    --downlink-mbps 10 --threads 2 --out out/demo
	$(BIN)/fedpress compare --dataset fashion-mnist --model cnn --clients 4 --rounds 40 \
	    --send gradient --local-steps 1 --algorithm fedavgm --lr 0.05 --test-limit 2000 \
	    --plans 'none,ef:topk(ratio=0.01),dgc(ratio=0.001,warmup=20,algorithm=fedavg),qsgd(levels=16),stc(ratio=0.01),powersgd(rank=2,aggregate=powersgd)' \
	    --uplink-mbps 10 --downlink-mbps 10 --threads 2 --out out/demo-grad
	$(BIN)/fedpress compare --dataset fashion-mnist --model cnn --clients 4 --rounds 20 \
	    --send update --local-steps 10 --test-limit 2000 \
	    --plans 'none,hgc(density=0.005,warmup=5)' --uplink-mbps 10 --downlink-mbps 10 \
	    --threads 2 --out out/demo-hgc

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
