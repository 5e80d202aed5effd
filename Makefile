# `make test` and `make demo` work on a fresh Debian machine with Python 3.11: they create .venv,
# install the project with its extras, and install mosquitto (and, for tests, systemd-analyze, openssl) with apt when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install system-packages test demo bench wheel clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "inspector needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev,openvino]'
	@touch $(STAMP)

install: $(STAMP)

# What the tests run besides Python: mosquitto (a real broker), systemd-analyze (unit checks), openssl (test certificates).
system-packages:
	@missing=""; \
	{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || missing="$$missing mosquitto"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
		echo "installing with apt:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: install system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole product in a few minutes: sample parts (or DATA=folder), train, export, calibrate, a local broker and
# `inspector run` on a watched folder, decisions printed as a subscriber receives them; everything stopped at the end.
demo: install system-packages
	$(BIN)/python -m inspector.demo --out demo $(if $(DATA),--data $(DATA))

bench: install
	$(BIN)/python benchmarks/bench_inference.py

# The package a line PC installs (deploy/install.sh dist/inspector-VERSION-py3-none-any.whl): the runtime only, no extras.
wheel: install
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) sample demo dist .pytest_cache *.egg-info
