# tarfuse_ros on a machine without a ROS distro (on a ROS install use colcon; see README).
# make demo  - set up if needed, then run the node with the shipped weights on a sample bag
# make test  - set up if needed, then run every test (lint included)
# On a ROS 2 install (Jazzy/Humble), with ROS sourced and this repository in <ws>/src/tarfuse_ros:
# make ros-install - a venv (--system-site-packages) with the pip packages, then colcon build
SHELL := /bin/bash
# The repository (this file's folder), so `make -f <repo>/Makefile ...` works from anywhere.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
ENV := cd $(ROOT) && source tools/ros_env/env.sh &&
OUT ?= $(ROOT)/output/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist, a test file each at a time; each process a test run of its own
# on DDS): two where the machine has two cores or more (about three quarters of one process's
# time on two), else 0, which runs them in make's own.
# (nproc without OMP_NUM_THREADS, which it would print instead of the cores.)
PYTEST_WORKERS ?= $(shell [ "$$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)" -ge 2 ] \
	&& echo 2 || echo 0)

.PHONY: setup demo test bench clean ros-install

setup:
	bash $(ROOT)/tools/ros_env/setup_env.sh

demo: setup
	$(ENV) tarfuse-demo --out $(abspath $(OUT))

test: setup
	$(ENV) python -m pytest -ra -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) test

bench: setup
	$(ENV) python benchmarks/bench_model.py --threads 2
	$(ENV) python benchmarks/bench_node.py

clean:
	cd $(ROOT) && rm -rf .cache output build install log

# The workspace is two levels up (<ws>/src/tarfuse_ros); the venv sees the distro's packages.
ROS_WS ?= $(abspath $(ROOT)/../..)
ROS_VENV ?= $(ROS_WS)/.venv
# kornia 0.9 needs Python 3.11 or newer: Humble's Ubuntu 22.04 has 3.10, which gets 0.8.2.
ROS_PIP ?= 'numpy<2' torch torchvision ultralytics==8.4.190 \
	'kornia==0.9.0; python_version >= "3.11"' 'kornia==0.8.2; python_version < "3.11"' \
	safetensors rosbags joblib

ros-install:
	@test -n "$$ROS_DISTRO" || { echo 'source /opt/ros/<distro>/setup.bash first' >&2; exit 1; }
	test -x $(ROS_VENV)/bin/python || python3 -m venv --system-site-packages $(ROS_VENV)
	touch $(ROS_VENV)/COLCON_IGNORE
	$(ROS_VENV)/bin/python -m pip install $(ROS_PIP)
	source $(ROS_VENV)/bin/activate && cd $(ROS_WS) && \
		python -m colcon build --packages-select tarfuse_ros
	@echo "fuse_node runs with: $$(head -1 $(ROS_WS)/install/tarfuse_ros/lib/tarfuse_ros/fuse_node)"
	@echo 'use it: source $(ROS_VENV)/bin/activate && source $(ROS_WS)/install/setup.bash'
