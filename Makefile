# `make demo` and `make test` each do the whole set-up first (idempotent, seconds when done).
PY := .venv/bin/python
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.venv/ultralytics-config
export MPLCONFIGDIR := $(CURDIR)/.venv/mpl-config

.PHONY: setup demo test bench paper-smoke

setup:
	bash tools/setup.sh

demo: setup
	$(PY) tools/demo.py
	$(PY) tools/demo_det.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_tradeoff.py
	$(PY) bench/bench_cascade.py
	$(PY) bench/bench_plan.py
	$(PY) bench/bench_planner_vs_dyce.py
	$(PY) bench/bench_det_sweep.py
	$(PY) bench/bench_serve.py
	$(PY) bench/bench_serve_faults.py
	$(PY) bench/bench_int8.py

# Every Table 1 and Table 4 config at full model size, random weights, 2 images (not part of `make
# test`; about 25 min on 2 cores): writes results/paper_scale/.
paper-smoke: setup
	$(PY) tools/paper_smoke.py
