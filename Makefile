# tarfuse_ros on a machine without a ROS distro (on a ROS install use colcon; see README).
# make demo  - set up if needed, then run the node with the shipped weights on a sample bag
# make test  - set up if needed, then run every test (lint included)
SHELL := /bin/bash
ENV := source tools/ros_env/env.sh &&
OUT ?= output/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup:
	bash tools/ros_env/setup_env.sh

demo: setup
	$(ENV) tarfuse-demo --out $(OUT)

test: setup
	$(ENV) python -m pytest -ra -p no:cacheprovider $(PYTEST_ARGS) test

bench: setup
	$(ENV) python benchmarks/bench_model.py --threads 2
	$(ENV) python benchmarks/bench_node.py

clean:
	rm -rf .cache output build install log
