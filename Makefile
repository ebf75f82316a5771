# The two set-up commands of README.md: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEBS := docker-registry skopeo umoci runc busybox-static
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install debs test check lint typecheck pytest demo bench clean

debs:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PY):
	python3 -m venv $(VENV)

install: debs $(PY)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools>=68" wheel
	$(PY) -m pip install -q -e '.[test]'

lint:
	$(VENV)/bin/ruff check .

# mypy cannot follow setuptools' editable import hook, so it checks a tree of
# symlinks laid out as the installed package is.
typecheck:
	@rm -rf .typecheck && mkdir -p .typecheck/ocikit
	@for f in ocikit/*; do ln -s ../../$$f .typecheck/ocikit/; done
	@ln -s ../../oci .typecheck/ocikit/oci
	@ln -s ../../registry .typecheck/ocikit/registry
	@ln -s ../../commands .typecheck/ocikit/commands
	cd .typecheck && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p ocikit
	MYPYPATH=.typecheck $(VENV)/bin/mypy --config-file pyproject.toml tests fixtures bench

pytest:
	$(PY) -m pytest -q tests

check: lint typecheck pytest

test: install check

demo: install
	$(PY) -m fixtures.demo

bench: install
	$(PY) bench/run.py

clean:
	rm -rf .typecheck build dist *.egg-info
