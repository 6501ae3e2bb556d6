# The README's two commands, each self-contained on a fresh machine:
#
#   make run    a local 3-node cluster in the foreground (data in ./kvs-cluster/; Ctrl-C stops it)
#   make test   everything CI runs (.ci/run is `make test` on a clean clone)
#
# Both first bring .venv up to date: this checkout installed editable with its test
# extras. The stamp file records the last install, so a changed pyproject.toml
# reinstalls and an unchanged one costs nothing.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

# Every recipe runs as if the venv were activated: `kvs`, `pytest` and `ruff` are the
# venv's, and so is the python integration_test.sh starts nodes with.
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

.PHONY: run test venv

run: $(STAMP)
	kvs cluster up --nodes 3

test: $(STAMP)
	ruff check kvs tests bench
	pytest -q
	PYTHON=$(VIRTUAL_ENV)/bin/python ./integration_test.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(VENV)/bin/python -m pip --version >/dev/null 2>&1 || { $(new_venv); }
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $@

# A venv with pip in it, from scratch. Debian ships venv's pip bootstrap (ensurepip)
# in the separate python3-venv package: as root it is installed with apt; without root
# the message says what to install.
define new_venv
rm -rf $(VENV); \
if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
  echo "== installing python3-venv (venv's pip bootstrap)"; \
  apt-get install -y -qq python3-venv >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq python3-venv >/dev/null 2>&1; } \
    || echo "   apt could not install python3-venv"; \
fi; \
$(PYTHON) -c 'import ensurepip' 2>/dev/null \
  || { echo "$(PYTHON) cannot make a venv with pip: install python3-venv (apt-get install python3-venv) and retry" >&2; \
       exit 1; }; \
echo "== creating $(VENV)"; $(PYTHON) -m venv $(VENV)
endef
