"""darknet-sparse: weight sparsification for Darknet (YOLO) models."""
from setuptools import find_packages, setup

setup(
    name="darknet-sparse",
    version="0.1.0",
    description="Prune Darknet (YOLO) .weights files and retrain them with a patched Darknet",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["darknet_sparse", "darknet_sparse.*"]),
    install_requires=[
        # Arrays, memmap and chunked I/O of .weights files.
        "numpy>=1.23",
        # The command line interface and its progress bars.
        "click>=8.0",
        # The in-process binding to the patched Darknet (built by `make binding`).
        "cffi>=1.15",
        # Per-layer spec files may be YAML; TOML needs no dependency on 3.11+.
        "pyyaml>=6.0",
        "tomli>=2.0; python_version < '3.11'",
        # `eval`: mAP@0.5 and mAP@0.5:0.95 by COCO's own evaluator, not a re-implementation.
        "pycocotools>=2.0.6",
    ],
    extras_require={
        # Optional charts (sensitivity curves); imported only when a plot is asked for.
        "plot": ["matplotlib>=3.6"],
        # The example model's dataset: scikit-learn ships the handwritten digits; Pillow writes PNGs.
        "examples": ["scikit-learn>=1.2", "pillow>=9.0"],
        # OpenCV's DNN module as the speed reference in `make bench-speed`.
        "bench": ["opencv-python-headless>=4.8,<5"],
        "test": ["pytest>=7.0", "hypothesis>=6.0"],
    },
    entry_points={"console_scripts": ["darknet-sparse=darknet_sparse.cli:main"]},
)
