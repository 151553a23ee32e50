# The two commands a new user needs:
#   make run    set everything up, publish a model if the repository has none, run Triton + gateway
#   make test   set everything up and run the whole test suite
# Everything lives in .venv/ inside the clone; setting up twice does not reinstall.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Which model `make run` serves (and exports first when missing). Unset: ResNet50 with ImageNet
# weights (downloaded once into torch's cache), or, when they can be neither downloaded nor found
# in the cache, the bundled EfficientNet-Lite0, with a one-line notice. MODEL=resnet50 asks for
# ResNet50 explicitly and fails offline instead of falling back.
MODEL ?=
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: setup system-deps run test test-slow lint typecheck bench eval clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[all]'
	@touch $(STAMP)

# Debian packages the test suite runs for real: promtool/prometheus and a compose implementation.
system-deps:
	@bash scripts/install-system-deps.sh

run: setup
	$(PY) -m local_stack $(if $(MODEL),--model $(MODEL)) --port $(PORT)

test: setup system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup system-deps
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy model_contract export gateway rollout local_triton local_stack bench eval tests

bench: setup
	$(PY) -m bench

# Accuracy through a running gateway (`make run` in another shell) on labelled ImageNet photos.
IMAGES ?= ../shared/imagenet-samples
eval: setup
	GATEWAY_API_KEY=$${GATEWAY_API_KEY:-$$(cat .cache/dev-api-key 2>/dev/null)} \
	  $(PY) -m eval.imagenet --gateway http://127.0.0.1:$(PORT) --images $(IMAGES) $(if $(MODEL),--model $(MODEL))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
