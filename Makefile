# edge-agent: the two commands a new user needs are `make demo` and `make test`.
# Both install what is missing first (Mosquitto via apt-get when absent, the Python package).
PYTHON ?= python3
PIP_FLAGS ?= -q
.PHONY: setup demo test bench check-demo clean

setup: .setup-done
.setup-done: pyproject.toml
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing mosquitto (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto; \
	fi
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[dev]'
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
