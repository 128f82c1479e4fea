# spidepth_ros developer entry points. `make demo` and `make test` do all set-up themselves.
# Everything is installed into .venv, idempotently (a stamp file records the requirements' hash).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
STAMP := $(VENV)/.setup-$(shell cat requirements-dev.txt setup.py | sha1sum | cut -c1-12)

.PHONY: setup test demo bench lint clean colcon-check

setup: $(STAMP)

$(STAMP): requirements-dev.txt setup.py
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH_PINS)
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.setup-*; touch $@

test: setup
	$(VPY) -m pytest -q test

demo: setup
	$(VPY) -m spidepth_ros.demo --out demo_output

bench: setup
	$(VPY) bench/model.py
	$(VPY) bench/inference.py
	$(VPY) bench/node.py
	$(VPY) bench/train.py

clean:
	rm -rf demo_output build install log .pytest_cache
