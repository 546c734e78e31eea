# The two commands of the README:
#   make train   out-of-the-box co-training + evaluation on generated data (CPU, minutes)
#   make test    the test suite
# Both set up the environment first (scripts/setup_env.sh; idempotent and quick when done).
# Use your own environment (with your torch/detectron2) with DATASEG_PYTHON=$(which python).

PY := $(if $(DATASEG_PYTHON),$(DATASEG_PYTHON),.venv/bin/python)
export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
OUTPUT ?= output/quickstart
TRAIN_ARGS ?=

.PHONY: setup train test data bench bench-reference claims clean

setup:
	bash scripts/setup_env.sh

data: setup
	$(PY) -m dataseg.data.synthetic --root $(DETECTRON2_DATASETS)/dataseg_synthetic

train: data
	$(PY) train_net.py --config-file configs/tiny/DaTaSeg-tiny.yaml --num-gpus 1 \
		TEST.DATASEG.NUM_VISUALIZATIONS 4 \
		OUTPUT_DIR $(OUTPUT) $(TRAIN_ARGS)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/run_benchmarks.py --output output/benchmarks.json

# DaTaSeg against the reference implementation, every CPU target as measured / target (~9 min).
bench-reference: setup
	$(PY) benchmarks/compare_reference.py --output output/compare_reference.json

claims: setup
	$(PY) projects/small_scale_claims/run_claims.py --output-dir output/claims

clean:
	rm -rf output .pytest_cache
