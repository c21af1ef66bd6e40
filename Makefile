# Everything a fresh machine needs, in one place. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install test lint servers serve demo bench image image-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned, CPU build: from PyTorch's CPU wheel index when it answers, else the plain
# spec (a machine with a CPU wheel on disk). A plain spec elsewhere would pull a CUDA build.
$(VENV)/.installed: pyproject.toml tools/install_torch.py | $(BIN)/python
	$(BIN)/python tools/install_torch.py
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/semcache models export
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

servers:
	bash tools/install_servers.sh

# Where a container tool works (podman, or Docker with an engine), the image is also built
# and run (tests/test_container.py): the README's one test command covers it too.
test: lint servers
	$(BIN)/pytest
	@if command -v podman >/dev/null || (command -v docker >/dev/null && docker info >/dev/null 2>&1); then \
		$(MAKE) --no-print-directory image-test; \
	else \
		echo "no container tool: the image's build-and-run test is skipped (make image-test)"; \
	fi

serve: install
	$(BIN)/semcache serve

demo: install
	$(BIN)/python examples/library_demo.py

bench: install
	$(BIN)/python benchmarks/core_bench.py

# The container image: Docker, or podman/buildah over a debootstrap'd Debian base when no
# registry answers (tools/build_image.sh).
image:
	bash tools/build_image.sh semcache:latest

# Build the image, run it against a fake upstream, get a paraphrase hit, stop it (slow).
image-test: install
	$(BIN)/pytest -m container tests/test_container.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
