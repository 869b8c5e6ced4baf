# Two commands do all set-up on a fresh machine:  make repro  |  make test
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install data repro review queue exps test bench clean

install: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1 install from local wheel files on this machine (pip only; see README).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Sample photos come from the installed ultralytics package: nothing is downloaded.
data: install
	$(PY) -m inpaint_sweep.assets

repro: data
	dvc repro

# The review app over the current view (after `make repro`): prints its URL; answers go to data/ratings/ (commit them).
review: install
	PYTHONPATH=src $(PY) stages/review.py $(ARGS)

# DVC experiments (README "Compare two grids"): run every experiment queued with `dvc exp run --queue -S ...`,
# JOBS at a time; unlike `dvc exp run --run-all`, exit 1 when any of them failed.
JOBS ?= 1
queue: data
	$(PY) -m inpaint_sweep.exp_queue --jobs $(JOBS)

# The experiments table that fits a terminal: changed grid values and the report's metrics (`dvc exp show` options
# go in EXP, e.g. make exps EXP="-A").
exps: install
	$(PY) -m inpaint_sweep.exp_table $(EXP)

# The HTML report's browser test needs Debian's chromium; install it (we run as root in CI) only when missing.
test: data
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)  # + playwright (pip, pinned) drives it
# The Slurm tests start a single-node cluster from Debian's packages (tests/slurm_cluster.py); without them (or root)
# they skip, saying why.
	test -x /usr/sbin/slurmctld -a -x /usr/sbin/slurmd -a -x /usr/sbin/slurmdbd -a -x /usr/sbin/munged \
	  -a -x /usr/sbin/mariadbd -a -x /usr/bin/sbatch || (apt-get update && apt-get install -y \
	  --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server) \
	  || echo "make test: the Slurm packages could not be installed; the Slurm tests will skip"
	$(PY) -m pytest

# Benchmarks (not part of the tests): each prints one measured ratio; BENCHMARKS.md records the figures.
bench: data
	$(PY) bench/sweep_overhead.py
	dvc repro && $(PY) bench/noop_repro.py
	$(PY) bench/prepare_speed.py
	$(PY) bench/help_speed.py
	$(PY) bench/report_scale.py
	$(PY) bench/review_scale.py
	$(PY) bench/gpu_throughput.py --arch tiny --size 64 --steps 2   # CPU smoke run; on a GPU: no flags
	$(PY) bench/unattended.py   # Slurm figures need root and the packages `make test` installs

clean:
	rm -rf results .cache
