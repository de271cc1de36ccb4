# Two commands set everything up on a fresh machine:
#   make tour   -> creates .venv, installs, runs `lossdoctor tour` (writes report/index.html)
#   make test   -> creates .venv, installs (every extra, the integrations' too, so their tests run), runs the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch must be installed before the project, or pip pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: tour test test-vision lint check docs bench bench-large clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all,dev,hf,lightning,tensorboard,docs]"
	touch $@

tour: $(BIN)/.installed
	$(BIN)/lossdoctor tour --out report

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

# Static checks CI runs before the tests: lint, and mypy over src/ (configured in pyproject.toml).
check: lint
	$(BIN)/mypy

# The docs site (mkdocs.yml): API reference from the docstrings, warnings are errors, no network.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# The competitors go into their own venv so .venv stays clean. curvlinops depends on
# backpack-for-pytorch, which declares torchvision; the newest torchvision would replace the CPU
# torch with a multi-GB CUDA build of a newer one, so the torchvision released with TORCH_SPEC is
# pinned in the same pip call. That PyPI torchvision does not import beside the CPU torch 2.13.0
# ('operator torchvision::nms does not exist'), and nothing here needs it to: backpack imports it
# only in backpack.utils.examples (dataset loaders), and curvlinops, PyHessian and
# hessian-eigenthings not at all. The last step imports every competitor, so a combination that
# does not work fails here, not halfway through a benchmark. (A torchvision that imports needs
# torch==2.14.1 torchvision==0.29.1: a 5.5 GB CUDA build, and a torch other than the project's.)
BENCH_VENV := .bench-venv
TORCHVISION_SPEC ?= torchvision==0.28.0
BENCH_ARGS ?=

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BENCH_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)" -e ".[all,bench]"
	$(BENCH_VENV)/bin/python -c "import torch, curvlinops, backpack, pyhessian, hessian_eigenthings, lossdoctor; \
	print('bench venv: torch', torch.__version__, '+ curvlinops, backpack, pyhessian, hessian-eigenthings import')"
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/curvature.py $(BENCH_ARGS)

# torchvision and timm need a torch/torchvision pair that imports together (torch 2.14.1 with
# torchvision 0.29.1, the `vision` extra), so their tests run in a venv of their own. That torch is a
# CUDA build (about 5.5 GB) and runs on the CPU as well.
VISION_VENV := .vision-venv
# The framework tests (torchvision, timm and Hugging Face models against finite differences and
# dense Hessians; every analysis and the CLI on tiny ResNet, MobileNetV3 and ViT) and a few core
# ones, on the other torch release.
VISION_TESTS ?= tests/test_frameworks.py tests/test_vision_analyses.py tests/test_docs_frameworks.py::test_readme_example_runs[vision] tests/test_mode.py tests/test_model_unchanged.py tests/test_operator.py

$(VISION_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VISION_VENV)/bin/python -m pip install --quiet -e ".[all,dev,hf,vision]"
	touch $@

test-vision: $(VISION_VENV)/.installed
	$(VISION_VENV)/bin/python -m pytest -q -p no:cacheprovider $(VISION_TESTS)

# The large-model benchmark (ResNet-18 and a GPT-2-small-sized model) beside PyHessian, in the vision venv.
bench-large: $(VISION_VENV)/.installed
	$(VISION_VENV)/bin/python -m pip install --quiet pyhessian==0.1
	$(VISION_VENV)/bin/python benchmarks/large_models.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(VISION_VENV) report
