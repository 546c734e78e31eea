"""Pack a folder's ``detectron2`` Python package into a pure-Python wheel pip can manage.

``scripts/setup_env.sh`` takes upstream detectron2's Python sources from the PyPI wheel
``sal-detectron2`` (tagged for CPython 3.10 only, with a compiled ``_C`` for it and metadata
that pins ``numpy<2``). Installing this wheel instead of copying the folder into
site-packages leaves detectron2 visible to ``pip list`` / ``pip show`` and removable with
``pip uninstall detectron2``. The wheel carries the package only (no top-level ``tools``
folder, which would shadow other packages), no compiled extension (torchvision provides the
ops DaTaSeg uses) and no dependencies (dataseg's setup.py lists detectron2's).

    python scripts/detectron2_wheel.py SOURCE_DIR OUTPUT_DIR   # prints the wheel's path
"""

import argparse
import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

_COMPILED = (".so", ".pyd", ".dll", ".dylib")


def _version(package: Path) -> str:
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""",
                      (package / "__init__.py").read_text(encoding="utf-8"), re.M)
    if not match:
        raise SystemExit(f"no __version__ in {package / '__init__.py'}")
    return match.group(1)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def build_wheel(source: Path, output: Path, note: str = "") -> Path:
    """Write ``detectron2-<version>-py3-none-any.whl`` from ``source/detectron2`` into
    ``output`` and return its path."""
    package = source / "detectron2"
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"{source} has no detectron2 package")
    version = _version(package)
    dist_info = f"detectron2-{version}.dist-info"
    files = {}
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts \
                and not path.name.endswith(_COMPILED):
            files[path.relative_to(source).as_posix()] = path.read_bytes()
    summary = "detectron2's Python sources" + (f" ({note})" if note else "")
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: detectron2\nVersion: {version}\nSummary: {summary}\n"
        "Home-page: https://github.com/facebookresearch/detectron2\nLicense: Apache-2.0\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: dataseg detectron2_wheel.py\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n").encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    output.mkdir(parents=True, exist_ok=True)
    wheel = output / f"detectron2-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder holding the detectron2 package")
    parser.add_argument("output", type=Path, help="folder the wheel is written to")
    parser.add_argument("--note", default="", help="where the sources came from (Summary)")
    args = parser.parse_args(argv)
    print(build_wheel(args.source, args.output, args.note))


if __name__ == "__main__":
    sys.exit(main())
