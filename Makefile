# Everything a fresh Debian 12 machine needs, as root: `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
# `make run` serves from a venv of its own: the program and what it needs, no test tools.
RUN_VENV := .venv-run
CONFIG ?= etc/authmilter.toml
APT_PACKAGES := python3 python3-venv python3-dev gcc libc6-dev libmilter-dev ca-certificates systemd
# `make deb` also needs dpkg-shlibdeps.
DEB_APT_PACKAGES := $(APT_PACKAGES) dpkg-dev

.PHONY: setup system-packages run test lint unit integration clean deb

setup: system-packages $(VENV)/.installed

# apt-get update only when something is missing, so a set-up machine starts in a second.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(RUN_VENV)/.installed: pyproject.toml
	test -x $(RUN_VENV)/bin/python || $(PYTHON) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/pip install -q --upgrade pip
	$(RUN_VENV)/bin/pip install -q -e .
	touch $@

run: system-packages $(RUN_VENV)/.installed
	$(RUN_VENV)/bin/authmilter serve -c $(CONFIG)

lint: setup
	$(BIN)/ruff check authmilter tests benchmarks
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(RUN_VENV) .pytest_cache .mypy_cache .ruff_cache dist

# dist/authmilter_<version>_<arch>.deb, built with dpkg-deb (packaging/build-deb.sh; install and
# purge: systemd/README.md). Needs no project venv: the package builds its own.
deb:
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(DEB_APT_PACKAGES)"
	packaging/build-deb.sh

# The load benchmark (benchmarks/README.md): `make bench BENCH_ARGS="-n 300 --scenario inbound"`.
.PHONY: bench
bench: setup
	$(BIN)/python -m benchmarks.load $(BENCH_ARGS)
