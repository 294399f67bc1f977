# The two commands: `make run` (the whole stack on this machine, host mode) and `make test`.
# Each installs what it needs on a fresh Debian/Ubuntu machine: Debian packages, the venv, pip packages.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Host-mode defaults (the image sets its own in docker/Dockerfile).
export WORKSPACE ?= $(CURDIR)/workspace
# The run dir of the last `make run` is remembered (.venv/run-dir), so `make ctl` finds the running stack's
# sockets without RUN_DIR repeated.
export RUN_DIR ?= $(or $(shell cat $(CURDIR)/.venv/run-dir 2>/dev/null),/tmp/comfyui-docker-$(shell id -u))
export COMFYUI_DIR ?= $(CURDIR)/comfyui
export COMFYUI_PYTHON ?= $(COMFYUI_DIR)/.venv/bin/python
export COMFYUI_LISTEN ?= 127.0.0.1
export DASHBOARD_LISTEN ?= 127.0.0.1

DEBIAN_PACKAGES := redis-server nginx python3-venv
TEST_PACKAGES := chromium openssl docker.io debootstrap libfuse2
BENCH_PACKAGES := nginx-light aria2 curl wrk iptables iproute2 libnetfilter-queue-dev
COMFYUI_REPO ?= https://github.com/comfyanonymous/ComfyUI
# The pinned ComfyUI commit, written once in config/comfyui.ref (the Dockerfile's and the bake file's
# defaults must match it: tests/test_docker.py checks).
COMFYUI_REF ?= $(shell grep -v '^\#' config/comfyui.ref)

.PHONY: run test lint bench ctl deps system-deps comfyui clean screenshots pins

run: deps ## The whole stack in the foreground; Ctrl-C stops it.
	echo "$(RUN_DIR)" > $(VENV)/run-dir
	exec docker/entrypoint.sh

pins: ## Re-resolve ComfyUI's release and every node's branch head (needs GitHub); review the diff
	python3 docker/pins.py

ctl: ## supervisorctl for the running stack: make ctl ARGS="status" / ARGS="tail -f worker"
	@$(PY) -m services.ctl $(ARGS)

test: deps $(VENV)/.installed-test ## The full test suite (lint, the container test). Runs as root.
	@if [ "$$(id -u)" != 0 ]; then echo "make test runs as root: it mounts file systems and runs dockerd (sudo make test)" >&2; exit 2; fi
	@$(MAKE) --no-print-directory system-deps DEBIAN_PACKAGES="$(TEST_PACKAGES)"
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -n 2 --dist loadfile

screenshots: deps $(VENV)/.installed-test ## Retake the README's screenshots (docs/*.png) from the browser test.
	@$(MAKE) --no-print-directory system-deps DEBIAN_PACKAGES="$(TEST_PACKAGES)"
	SCREENSHOTS_DIR=docs $(PY) -m pytest tests/test_browser.py -q

lint: deps $(VENV)/.installed-test
	$(PY) -m ruff check .

bench: deps $(VENV)/.installed-test ## Benchmarks: print figures and ratios against the tools users would pick instead.
	@$(MAKE) --no-print-directory system-deps DEBIAN_PACKAGES="$(BENCH_PACKAGES)"
	$(PY) -m pip install -q 'netfilterqueue>=1.1' 'safetensors>=0.4' 'numpy>=1.26'
	$(PY) bench/startup.py
	$(PY) bench/presets.py
	$(PY) bench/workflows.py
	$(PY) bench/dashboard.py
	$(PY) bench/frontdoor.py
	$(PY) bench/router.py
	$(PY) bench/faults.py
	$(PY) bench/downloads.py
	$(PY) bench/netvolume.py

deps: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for pkg in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# A venv left half-made by an interrupted run (no pip in it) is made again, not patched.
$(VENV)/.venv-ok:
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then rm -rf $(VENV) && python3 -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	touch $@

# make run needs only the runtime packages; make test adds its own on top.
$(VENV)/.installed: pyproject.toml | $(VENV)/.venv-ok
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

comfyui: ## Install ComfyUI for host mode at the image's pinned commit (needs network to GitHub and PyPI).
	test -f $(COMFYUI_DIR)/main.py || { git init -q $(COMFYUI_DIR) && \
	  git -C $(COMFYUI_DIR) fetch -q --depth 1 $(COMFYUI_REPO) $(COMFYUI_REF) && \
	  git -C $(COMFYUI_DIR) checkout -q FETCH_HEAD; }
	test -x $(COMFYUI_PYTHON) || python3 -m venv $(COMFYUI_DIR)/.venv
	$(COMFYUI_PYTHON) -m pip install torch torchvision torchaudio
	$(COMFYUI_PYTHON) -m pip install -r $(COMFYUI_DIR)/requirements.txt -r $(COMFYUI_DIR)/manager_requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
