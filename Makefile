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
# pip is quiet; the local-index "is ignored" notices some machines print are filtered out
pip_install = set -o pipefail; $(VPY) -m pip install -q $(1) 2>&1 | { grep -v "is ignored: it is neither" || true; }
STAMP := $(VENV)/.setup-$(shell cat requirements-dev.txt setup.py | sha1sum | cut -c1-12)

.PHONY: setup test demo bench lint clean colcon-check demo-data demo-weights demo-pose demo-mono

# TensorRT 10 and 11 Python bindings wheels (not installed: they need libnvinfer), for test_tensorrt_api.py
TRT_WHEELS := .cache/tensorrt-wheels
TRT_STAMP := $(TRT_WHEELS)/.downloaded
trt_download = $(VPY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
	--platform manylinux_2_28_x86_64 -d $(TRT_WHEELS) "tensorrt-cu12-bindings$(1)" 2>&1 | \
	{ grep -v "is ignored: it is neither" || true; }

setup: $(STAMP) $(TRT_STAMP)

$(TRT_STAMP): | $(STAMP)
	@mkdir -p $(TRT_WHEELS)
	set -o pipefail; $(call trt_download,==10.*)
	set -o pipefail; $(call trt_download,==11.*)
	@touch $@

$(STAMP): requirements-dev.txt setup.py
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(call pip_install,--upgrade pip)
	$(call pip_install,$(TORCH_PINS))
	$(call pip_install,-r requirements-dev.txt)
	$(call pip_install,--no-deps -e .)
	@rm -f $(VENV)/.setup-*; touch $@

test: setup
	$(VPY) -m pytest -q -p no:cacheprovider test

demo: setup
	$(VPY) -m spidepth_ros.ros.demo --out demo_output

bench: setup
	$(VPY) bench/model.py
	$(VPY) bench/inference.py
	$(VPY) bench/node.py
	$(VPY) bench/train.py

clean:
	rm -rf demo_output build install log .pytest_cache

# Re-create the demo weights from scratch (see docs/demo_weights.md for the time it took here).
SYNTH = $(VENV)/bin/spidepth-synth
demo-data: setup
	@for s in 1 2 3; do test -d data/stereo_train_$$s || $(SYNTH) data/stereo_train_$$s --seed $$s --frames 200 --width 320 --height 96 --stereo-baseline 0.5; done
	@test -d data/stereo_val_100 || $(SYNTH) data/stereo_val_100 --seed 100 --frames 60 --width 320 --height 96 --stereo-baseline 0.5

demo-weights: demo-data
	$(VENV)/bin/spidepth-train --config config/demo_train.yaml
	$(VPY) -m spidepth_ros.tools.package_demo_weights runs/demo/best.pt models/demo_small.pt --scale-from-bag data/stereo_val_100

# The PoseNet inside the demo weights: trained alone (depth frozen) on synthetic monocular bags, then packaged
# with the unchanged depth network and its calibrated scale (docs/demo_weights.md).
demo-pose: setup
	@for s in 1 2; do test -d data/mono_train_$$s || $(SYNTH) data/mono_train_$$s --seed $$s --frames 200 --width 320 --height 96; done
	cp models/demo_small.pt runs/demo_small.before_pose.pt 2>/dev/null || (mkdir -p runs && cp models/demo_small.pt runs/demo_small.before_pose.pt)
	$(VENV)/bin/spidepth-train --config config/demo_pose.yaml
	$(VPY) -m spidepth_ros.tools.package_demo_weights runs/demo_pose/last.pt models/demo_small.pt \
		--scale-from-checkpoint runs/demo_small.before_pose.pt

# Monocular-only training from scratch on synthetic bags within the stereo recipe's 52 minutes (docs/real_data.md).
demo-mono: setup
	@for s in 1 2 3; do test -d data/mono_train_$$s || $(SYNTH) data/mono_train_$$s --seed $$s --frames 200 --width 320 --height 96; done
	@test -d data/mono_val_100 || $(SYNTH) data/mono_val_100 --seed 100 --frames 60 --width 320 --height 96
	$(VENV)/bin/spidepth-train --config config/demo_mono.yaml
