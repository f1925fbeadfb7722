#!/usr/bin/env bash
# Dry-run stand-in for the launchers' python (set by allocation.sh under --dry-run): prints the command line that
# would run, with the real interpreter ($DRY_RUN_PYTHON) in its place, and runs nothing.
printf '[dry-run] %q' "${DRY_RUN_PYTHON:-python}"
printf ' %q' "$@"
printf '\n'
