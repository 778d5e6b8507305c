# Two entry points for a fresh machine: `make demo` and `make test`.
# Both set up .venv themselves and are quick when it is already up to date.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# A CPU build unless a torch is already importable: an unpinned torch pulls a
# multi-GB CUDA build. GPU users install their own CUDA torch into .venv first
# (or point VENV at an environment that has one).
TORCH_SPEC ?= torch==2.13.0

KERNEL_SRC := $(wildcard _trim/*.pyx _trim/*.pxd _trim/*.h _trim/records/*.pyx _trim/records/*.pxd _trim/records/*.h) setup.py
KERNEL_SO  := $(VENV)/.stamp-kernel$(if $(TRIMMER_DEBUG),-debug)

.PHONY: install demo test lint bench asan clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-deps: pyproject.toml | $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.24"
	$(PIP) install -q --no-build-isolation -e ".[test,s3,tracing]"
	$(if $(filter 0,$(TORCHREC)),,$(MAKE) --no-print-directory torchrec-extra)
	touch $@

# The [torchrec] extra (pyproject.toml): the torchrec/fbgemm pair without its
# dependencies (torchrec asks for an unpinned CUDA fbgemm-gpu), the rest with
# them; never a torch. On a CUDA torch the pair's fbgemm is fbgemm-gpu.
# TORCHREC=0 leaves it out.
EXTRA = $(PY) -c "import tomllib,sys; x=tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['torchrec']; cuda=__import__('torch').version.cuda; print(' '.join(r.replace('fbgemm-gpu-cpu','fbgemm-gpu') if cuda else r for r in x if r.startswith(('torchrec','fbgemm'))==(sys.argv[1]=='pair')))"
.PHONY: torchrec-extra
torchrec-extra: | $(VENV)/bin/python
	$(PIP) install -q --no-deps $$($(EXTRA) pair)
	$(PIP) install -q $$($(EXTRA) rest)
	$(PY) -c "from signatures.repository.torchrec_runtime import require; require()"

$(KERNEL_SO): $(KERNEL_SRC) $(VENV)/.stamp-deps
	TRIMMER_DEBUG=$(TRIMMER_DEBUG) $(PY) setup.py -q build_ext --inplace
	rm -f $(VENV)/.stamp-kernel*
	touch $@

install: $(KERNEL_SO)

demo: install
	$(VENV)/bin/trimmer demo $(DEMO_ARGS)

# Style and types first: they take seconds, the suite minutes.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Then every benchmark once, small (bench/quick.py): a bench that breaks fails the build.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)
	TRIMMER_BENCH_QUICK=1 $(PY) -m pytest bench --benchmark-disable -q $(BENCH_ARGS)

bench: install
	$(PY) -m pytest bench --benchmark-only $(PYTEST_ARGS)

# The kernel's tests under AddressSanitizer + UBSan, on a copy of HEAD built
# with TRIMMER_DEBUG=1. `python -S` skips .pth files, so the editable install of
# the normal build cannot shadow the instrumented one.
ASAN_DIR := build/asan
asan: install
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR) && git archive HEAD | tar -x -C $(ASAN_DIR)
	cd $(ASAN_DIR) && CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	  LDFLAGS="-fsanitize=address,undefined" TRIMMER_DEBUG=1 $(CURDIR)/$(PY) setup.py -q build_ext --inplace
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  PYTHONPATH=.:$$($(CURDIR)/$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
	  $(CURDIR)/$(PY) -S -m pytest tests/trim -q -p no:cacheprovider

clean:
	rm -rf build $(VENV) _trim/*.so _trim/*.c _trim/records/*.so _trim/records/*.c *.egg-info
