#!/usr/bin/env bash
# Set up (or reuse) the Python environment DaTaSeg runs in. Idempotent: a second run with
# nothing changed only checks the imports.
#
#   scripts/setup_env.sh            # creates/reuses ./.venv
#   DATASEG_PYTHON=$(which python) scripts/setup_env.sh
#                                   # installs into YOUR environment (keeps its torch/detectron2
#                                   # and its OpenCV build)
#
# Environment: DATASEG_EXTRAS (default test,minilm,clip,deploy), DATASEG_VENV (default ./.venv),
# PYTHON (the python3 that creates the venv), DATASEG_STAMP_DIR (where the record of the last
# successful set-up of a DATASEG_PYTHON lives; default ./.dataseg-setup).
#
# Order matters: torch first (so no later package pulls a second torch), then detectron2,
# then this package with its extras.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
D2_WHEEL_SPEC="sal-detectron2==0.7.2"
EXTRAS="${DATASEG_EXTRAS:-test,minilm,clip,deploy}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -n "${DATASEG_PYTHON:-}" ]]; then
  PY="$DATASEG_PYTHON"
  "$PY" -c "import sys" 2>/dev/null || die "DATASEG_PYTHON=$PY does not run"
  # One stamp per environment (sys.prefix), outside it: a user's environment may be shared
  # or read-only apart from its site-packages.
  STAMP_DIR="${DATASEG_STAMP_DIR:-$ROOT/.dataseg-setup}"
  mkdir -p "$STAMP_DIR" || die "cannot create the set-up stamp folder $STAMP_DIR"
  STAMP_KEY="$("$PY" -c 'import sys; print(sys.prefix)' | sha256sum | cut -c1-12)"
else
  VENV="${DATASEG_VENV:-$ROOT/.venv}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    BASE_PY="${PYTHON:-python3}"
    command -v "$BASE_PY" >/dev/null || die "no $BASE_PY on PATH; set PYTHON=/path/to/python3"
    log "creating virtual environment $VENV"
    "$BASE_PY" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
  STAMP_DIR="$VENV"
  STAMP_KEY="venv"
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# The stamp records the inputs of the last successful set-up; same inputs + working imports
# means there is nothing to do. The imports are those of the packages that are imported only
# when first used (a missing one would otherwise surface mid-run): panopticapi by the panoptic
# evaluator, shapely by the training crop of polygon annotations, and with the deploy extra
# onnx, onnxscript and onnxruntime by the ONNX export and its predictor.
STAMP="$STAMP_DIR/.dataseg-setup-stamp"
[[ "$STAMP_KEY" == "venv" ]] || STAMP="$STAMP_DIR/stamp-$STAMP_KEY"
WANT="$(cat setup.py scripts/setup_env.sh scripts/detectron2_wheel.py | sha256sum | cut -c1-16) extras=$EXTRAS"
IMPORTS="import torch, detectron2, dataseg, panopticapi.evaluation, shapely.geometry"
if [[ ",$EXTRAS," == *",deploy,"* ]]; then
  IMPORTS="$IMPORTS, onnx, onnxscript, onnxruntime"
fi
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c "$IMPORTS" 2>/dev/null; then
  log "environment is up to date ($PY)"
  exit 0
fi

PY_VER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
ARCH="$(uname -m)"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# 1. torch: keep whatever is installed (a user's CUDA build); otherwise the pinned build.
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ -n "$TORCH_VERSION" ]]; then
  # Never replace a user's torch: a torchvision pulled in here could bring another torch.
  "$PY" -c "import torchvision" 2>/dev/null || die "torch $TORCH_VERSION is installed but \
torchvision is not; install the torchvision build that matches it (https://pytorch.org), then \
run the set-up again"
  log "keeping installed torch $TORCH_VERSION"
else
  log "installing $TORCH_SPEC"
  if [[ "$ARCH" == "x86_64" && "$PY_VER" == "3.11" ]]; then
    "${PIP[@]}" install $TORCH_SPEC
  else
    log "no pinned torch for $ARCH / Python $PY_VER; installing the newest compatible one"
    "${PIP[@]}" install torch torchvision
  fi
fi

# 2. detectron2: keep an installed one (users build it for their CUDA). Otherwise take
# upstream's Python sources from the PyPI wheel sal-detectron2, which is tagged for CPython
# 3.10 only; its compiled _C is not needed (torchvision provides ROIAlign/NMS). They are
# repacked into a pure-Python wheel (scripts/detectron2_wheel.py: the package only, without
# the wheel's top-level 'tools' folder and its numpy<2 pin) and installed with pip, so
# `pip list` shows detectron2 and `pip uninstall detectron2` removes it. A copy an earlier
# version of this script left in site-packages without metadata is replaced the same way.
D2_STATE="$("$PY" - "$SITE" <<'EOF' 2>/dev/null || true
import os, sys
from importlib import metadata
try:
    import detectron2
except ImportError:
    print("missing")
    raise SystemExit
try:
    metadata.distribution("detectron2")
except metadata.PackageNotFoundError:
    here = os.path.realpath(os.path.dirname(detectron2.__file__))
    if here == os.path.realpath(os.path.join(sys.argv[1], "detectron2")):
        print("unmanaged")
        raise SystemExit
print("keep", detectron2.__version__)
EOF
)"
if [[ "$D2_STATE" == keep* ]]; then
  log "keeping installed detectron2 ${D2_STATE#keep }"
else
  log "installing detectron2 sources from $D2_WHEEL_SPEC"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "${PIP[@]}" install --no-deps --only-binary=:all: --python-version 3.10 \
      --target "$TMP/src" "$D2_WHEEL_SPEC"
  D2_WHEEL="$("$PY" scripts/detectron2_wheel.py "$TMP/src" "$TMP/dist" \
      --note "repacked from $D2_WHEEL_SPEC by dataseg's scripts/setup_env.sh")" \
      || die "$D2_WHEEL_SPEC did not contain a detectron2 package"
  if [[ "$D2_STATE" == "unmanaged" ]]; then rm -rf "$SITE/detectron2"; fi
  "${PIP[@]}" install --no-deps --no-index "$D2_WHEEL"
fi

# 3. This package (editable) with its dependencies and extras. An importable cv2 (whatever
# OpenCV build provides it: opencv-python with GUI, contrib, headless) is kept: setup.py then
# requires no OpenCV distribution (DATASEG_OPENCV=""); otherwise it requires the headless one.
CV2_VERSION="$("$PY" -c 'import cv2; print(cv2.__version__)' 2>/dev/null || true)"
if [[ -n "$CV2_VERSION" ]]; then
  export DATASEG_OPENCV="${DATASEG_OPENCV-}"
  log "keeping installed OpenCV $CV2_VERSION"
fi
log "installing dataseg[$EXTRAS] (editable)"
"${PIP[@]}" install -e ".[$EXTRAS]"

# setup.py's NO_DEPS_REQUIREMENTS (panopticapi-lite: its metadata pins numpy<2 but it runs on
# numpy 2; with its dependencies pip would downgrade numpy under OpenCV).
NO_DEPS="$("$PY" - <<'EOF'
import ast
tree = ast.parse(open("setup.py").read())
print(" ".join(next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", "") == "NO_DEPS_REQUIREMENTS")))
EOF
)"
if ! "$PY" -c "import panopticapi.evaluation" 2>/dev/null; then
  log "installing $NO_DEPS without dependencies"
  "${PIP[@]}" install --no-deps $NO_DEPS
fi

"$PY" -c "$IMPORTS" || die "'$IMPORTS' fails; see the traceback above"
"$PY" - <<'EOF' || die "the environment does not import; see the traceback above"
import detectron2, torch
from detectron2.modeling import build_model  # noqa: F401  (pulls most of detectron2)
import panopticapi.evaluation  # noqa: F401  (COCO panoptic evaluator)
import shapely.geometry  # noqa: F401  (fvcore's crop of polygon annotations in training)
import dataseg
print(f"[setup] torch {torch.__version__}, detectron2 {detectron2.__version__}, "
      f"dataseg {dataseg.__version__}")
EOF
echo "$WANT" > "$STAMP"
log "done ($PY)"
