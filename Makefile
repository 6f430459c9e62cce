# kubenetem: `make test` and `make demo` work on a fresh machine with only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What the real-component tests (markers `kernel` and `nginx`) and benchmarks drive.
DEB_PACKAGES := iptables nftables nginx-light conntrack haproxy ipset iproute2 strace tshark
DEB_COMMANDS := iptables nft nginx conntrack haproxy ipset ip tc strace tshark

.PHONY: test demo lint typecheck unit bench system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Installs the Debian packages the real-component tests need, when run as root
# and one of them is missing. Without root the tests skip (or fail under
# KUBENETEM_REQUIRE_REAL=1) and say which tool is missing.
system-deps:
	@missing=""; for c in $(DEB_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
	  else echo "not root: real-component tests will skip (missing:$$missing)"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	$(BIN)/pytest -q --benchmark-disable

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/pytest benchmarks --benchmark-only

demo: $(STAMP)
	$(BIN)/kubenetem demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .benchmarks dist build kubenetem-report
