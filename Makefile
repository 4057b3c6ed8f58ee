# Two commands do all set-up on a fresh Debian machine:
#   make run   - venv, install, start the web app on the embedded model and soundfont
#   make test  - the same set-up, then the whole test suite
# Both are idempotent: a second run only checks stamps.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A CPU build of torch that lies on local disk; a bare `torch` on an empty venv would
# pull a multi-GB CUDA build, so torch is pinned and installed before the project.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test setup system-run system-test bench clean

run: setup system-run
	$(PY) launch.py $(ARGS)

test: setup system-test
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# libfluidsynth renders audio; ffmpeg encodes the page's streamed audio (Gradio); chromium drives
# the browser tests. Installed when we are
# root with apt; otherwise the one command to run is printed.
system-run:
	@sh scripts/system_deps.sh libfluidsynth ffmpeg

system-test:
	@sh scripts/system_deps.sh libfluidsynth chromium ffmpeg

bench: setup system-run
	$(PY) bench/render.py
	$(PY) bench/generate.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
