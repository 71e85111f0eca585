# darknet-sparse: every target installs what it needs first.
#   make test    set-up, patched + stock Darknet, the binding, then every test
#   make demo    set-up, then info / threshold / a short loop on the example model
#   make bench   threshold against cp (time, memory); prune=1 training overhead

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# Build options passed through to upstream's Makefile (default: all off).
GPU    ?= 0
CUDNN  ?= 0
OPENCV ?= 0
OPENMP ?= 0
ARCH   ?= -gencode arch=compute_90,code=sm_90
export GPU CUDNN OPENCV OPENMP ARCH DARKNET_SRC

BINDING_STAMP := build/.binding-stamp

.PHONY: all setup system-deps venv darknet darknet-stock binding test demo bench bench-speed bench-quality clean

all: setup darknet binding

setup: system-deps venv

# Debian's stock darknet (binary, libdarknet.so, darknet.h, upstream cfgs) is
# the oracle the tests compare against.
system-deps: build/.system-deps
build/.system-deps:
	mkdir -p build
	@if [ ! -x /usr/bin/darknet ] || [ ! -f /usr/lib/darknet/libdarknet.so ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q darknet; \
	fi
	touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,plot,examples,bench]'
	touch $@

darknet:
	scripts/build_darknet.sh patched

darknet-stock:
	scripts/build_darknet.sh stock

binding: venv darknet
	$(VPY) -m darknet_sparse._darknet_build

test: setup darknet darknet-stock binding
	$(VPY) -m pytest -q tests

demo: setup darknet binding
	scripts/demo.sh

bench: setup darknet binding
	$(VPY) benchmarks/bench_threshold.py
	$(VPY) benchmarks/bench_prune_overhead.py

bench-speed: setup darknet darknet-stock
	$(VPY) benchmarks/bench_speed.py

bench-quality: setup darknet binding
	$(VPY) benchmarks/bench_quality.py

clean:
	rm -rf build $(VENV) darknet_sparse/_darknet*.so darknet_sparse/_darknet.c
