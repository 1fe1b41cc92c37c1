# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv and
# install torch==2.13.0 (the local CPU build) *before* the package, so nothing pulls CUDA.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepedge-installed

.PHONY: install browser demo demo-quick test test-slow lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The dashboard's browser tests drive Debian's Chromium (Playwright's own download fails
# here). Installed when missing and apt is usable (root); otherwise those tests skip,
# except in CI, where DEEPEDGE_REQUIRE_BROWSER=1 makes a missing browser fail them.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "no Chromium (needs root and apt): the dashboard's browser tests will skip"

demo: $(STAMP)
	$(VENV)/bin/deepedge demo --out demo-out --dashboard

demo-quick: $(STAMP)
	$(VENV)/bin/deepedge demo --quick --out demo-out --dashboard

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

test: $(STAMP) browser lint
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) bench/uneven_split.py
	$(PY) bench/profile_accuracy.py
	$(PY) bench/interference_accuracy.py
	$(PY) bench/schedule_scale.py
	$(PY) bench/schedule_emulated.py

clean:
	rm -rf $(VENV) demo-out runs .pytest_cache .ruff_cache
