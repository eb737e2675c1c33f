#!/usr/bin/env bash
# INT8 (static QDQ) versions of models/centernet.onnx and models/movenet-multipose.onnx, made
# reproducibly from fixed frames of the sample clip, and checked against the committed files.
# See models/MODELS.md, section "INT8".
#
#   models/quantize.sh [--install] [OUTDIR]   # build; compare sha256 with models/*.int8.onnx
#   models/quantize.sh eval [ARGS]            # agreement with fp32 (models/quantize.py eval --help)
#   models/quantize.sh bench [ARGS]           # onnxruntime (Python) speed, fp32 against INT8
#   models/quantize.sh sensitivity --model M  # what each quantized Conv costs, alone (tuning frames)
#
#   OUTDIR     where the built files go (default: a new directory under ${TMPDIR:-/tmp}).
#   --install  copy the built files over models/*.int8.onnx (update MODELS.md's sha256 then).
#
# Needs python3 (3.11 tested) with venv, PyPI access the first time, and the media from
# scripts/setup (which it runs). Exit status: 0 = built files are byte-identical to the committed
# ones (or installed); 1 = they differ or a step failed; 2 = usage.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=$REPO/.cache/quantize-venv
REQS=$HERE/requirements-quantize.txt
MODELS=(centernet movenet-multipose)

die() { printf 'quantize.sh: %s\n' "$*" >&2; exit 1; }

# The venv: rebuilt only when the Python or requirements-quantize.txt changed.
venv() {
  local stamp=$VENV/.quantize-requirements want
  want=$("$PYTHON" -c 'import platform; print("python", platform.python_version())'; cat "$REQS")
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
    return
  fi
  printf 'quantize.sh: creating %s\n' "$VENV" >&2
  rm -rf -- "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --find-links "$REPO/.cache/wheels" -r "$REQS" || { rm -rf -- "$VENV"; die "pip install -r $REQS failed"; }
  "$VENV/bin/python" -m pip check --disable-pip-version-check >&2
  printf '%s\n' "$want" >"$stamp"
}

case "${1:-}" in
  -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
"$REPO/scripts/setup" >/dev/null
venv
PY=$VENV/bin/python

case "${1:-}" in
  eval | bench | sensitivity) exec "$PY" "$HERE/quantize.py" "$@" ;;
esac

INSTALL=0
OUT=
for a in "$@"; do
  case $a in
    --install) INSTALL=1 ;;
    -*) printf 'quantize.sh: unknown option %s\n' "$a" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { printf 'quantize.sh: one OUTDIR only\n' >&2; exit 2; }; OUT=$a ;;
  esac
done
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/sideline-int8.XXXXXX")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ "$OUT" != "$HERE" ] || die "OUTDIR must not be models/ itself (use --install)"

"$PY" "$HERE/quantize.py" build --out "$OUT"
same=1
for m in "${MODELS[@]}"; do
  new=$(sha256sum "$OUT/$m.int8.onnx" | cut -d' ' -f1)
  old=$(sha256sum "$HERE/$m.int8.onnx" 2>/dev/null | cut -d' ' -f1 || true)
  if [ "$new" = "$old" ]; then
    printf '%s.int8.onnx: sha256 %s, identical to the committed file\n' "$m" "$new"
  else
    printf '%s.int8.onnx: sha256 %s, committed %s: DIFFERENT\n' "$m" "$new" "${old:-(none)}"
    same=0
  fi
done
if [ "$INSTALL" = 1 ]; then
  for m in "${MODELS[@]}"; do
    cp "$OUT/$m.int8.onnx" "$HERE/$m.int8.onnx.tmp" && mv "$HERE/$m.int8.onnx.tmp" "$HERE/$m.int8.onnx"
    printf 'installed %s\n' "$HERE/$m.int8.onnx"
  done
  echo "update the sha256 values in models/MODELS.md"
  exit 0
fi
[ "$same" = 1 ] || { echo "quantize.sh: built files differ from the committed ones (output in $OUT)" >&2; exit 1; }
echo "OK: built INT8 models are identical to the committed ones (output in $OUT)"
