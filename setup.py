"""darknet-sparse: weight sparsification for Darknet (YOLO) models.

The package carries what `darknet-sparse build` needs to build the patched
Darknet anywhere: the shim sources (package data) and, copied in at build time
from the repository's own patches/ and scripts/build_darknet.sh (the one source
of truth), darknet_sparse/_upstream/.  Nothing is compiled at install time:
Darknet is fetched first, by `darknet-sparse build`, into a per-user folder.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: Repository files shipped as darknet_sparse/_upstream/<same path>.
UPSTREAM = ["scripts/build_darknet.sh", "scripts/build_common.sh", "patches/series", "patches/upstream.sha256",
            "patches/*.patch", "patches/kernels/*.c", "patches/kernels/*.h",
            # AlexeyAB's fork: `darknet-sparse build --fork alexeyab`.
            "scripts/build_darknet_alexeyab.sh", "patches/alexeyab/series", "patches/alexeyab/upstream.digest",
            "patches/alexeyab/*.patch"]


class BuildWithUpstream(build_py):
    """build_py, plus the build script and patches under darknet_sparse/_upstream/."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "darknet_sparse" / "_upstream"
        shutil.rmtree(target, ignore_errors=True)  # a patch removed from the series leaves no stale copy
        for pattern in UPSTREAM:
            found = sorted(HERE.glob(pattern))
            if not found:
                raise SystemExit(f"setup.py: {pattern} is missing: the package needs it to build Darknet")
            for source in found:
                dest = target / source.relative_to(HERE)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)


setup(
    name="darknet-sparse",
    version="0.1.0",
    description="Prune Darknet (YOLO) .weights files and retrain them with a patched Darknet",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["darknet_sparse", "darknet_sparse.*"]),
    # The shim the binding is compiled from (other shim parts: _shim_*.c, each fork's glue: _fork_*.c);
    # never the compiled module.
    package_data={"darknet_sparse.darknet": ["_shim.c", "_shim_*.c", "_fork_*.c", "*.h", "_forward_driver.c",
                                             "_ab_driver.c"]},
    cmdclass={"build_py": BuildWithUpstream},
    # setuptools' work folder: build/ itself holds the Darknet trees of a checkout.
    options={"build": {"build_base": "build/python"}},
    install_requires=[
        # Arrays, memmap and chunked I/O of .weights files.
        "numpy>=1.23",
        # The command line interface and its progress bars.
        "click>=8.0",
        # The in-process binding to the patched Darknet (compiled by `darknet-sparse build`).
        "cffi>=1.15",
        # Decoding images as Darknet does: `recalibrate --images` and the example's PNGs.
        "pillow>=9.0",
        # Per-layer spec files may be YAML; TOML needs no dependency on 3.11+.
        "pyyaml>=6.0",
        "tomli>=2.0; python_version < '3.11'",
        # `eval`: mAP@0.5 and mAP@0.5:0.95 by COCO's own evaluator, not a re-implementation.
        "pycocotools>=2.0.6",
    ],
    extras_require={
        # Optional charts (sensitivity curves); imported only when a plot is asked for.
        "plot": ["matplotlib>=3.6"],
        # The example model's dataset: scikit-learn ships the handwritten digits.
        "examples": ["scikit-learn>=1.2"],
        # OpenCV's DNN module as the speed reference in `make bench-speed` and `make bench-detector`.
        "bench": ["opencv-python-headless>=4.8,<5"],
        # wheel: tests/test_install.py builds the package without build isolation (offline),
        # and setuptools before 70.1 has no bdist_wheel of its own.
        # opencv-python-headless: `make images` (run by `make test`) decodes the video frames with it.
        "test": ["pytest>=7.0", "hypothesis>=6.0", "wheel", "opencv-python-headless>=4.8,<5"],
    },
    entry_points={"console_scripts": ["darknet-sparse=darknet_sparse.cli:main"]},
)
