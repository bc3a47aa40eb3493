#!/usr/bin/env bash
# The first GPU check (issue 21): learner vs the torch.compile peer, decode vs its memory floor,
# the 1B memory plan, a short LM grid; each in its own process, under 8 minutes on an H200.
#
#   bash gpu/check.sh OUTDIR [--tiny] [--budget_s=SECONDS]
#
# OUTDIR receives check.json (rewritten after each part) and each part's JSON. --tiny runs the
# same path at toy shapes on a CPU. Uses `python3` (the GPU machine's, or the one first on PATH)
# from the repository root; needs jax, flax, optax, orbax-checkpoint, chex, absl-py, numpy,
# safetensors, tokenizers (and torch for the peer row), not ml_collections or tensorboardX.
# Wheels carried in .whl/ (see docs/benchmarks.md, "The GPU check") are installed first when
# that folder exists. Details: bench/gpu_check.py.
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bash gpu/check.sh OUTDIR [--tiny] [--budget_s=SECONDS] (OUTDIR first, got: ${*:-nothing})" >&2
  exit 2
fi
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/async_grpo_site .whl/*.whl
  export PYTHONPATH=/tmp/async_grpo_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec python3 -m bench.gpu_check "$OUTDIR" "$@"
