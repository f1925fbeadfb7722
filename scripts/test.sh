#!/usr/bin/env bash
# The README's test command: the whole suite on CPU, offline. pytest's exit code 5 ("no tests collected")
# counts as a failure here, because an empty run checks nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest tests -q --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
