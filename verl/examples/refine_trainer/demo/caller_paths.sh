# Sourced by run_{midtrain,posttrain,testtimetrain}_demo.sh before they change to the repository root (never run on
# its own). Paths are taken relative to the folder the script is run from, as with any command: the run folder
# (CKPT_DIR, default checkpoints/<project>/<experiment>) is created there, and a relative MODEL_PATH, TRAIN_FILES or
# VAL_FILES that exists there is used from there (one that does not is looked up in the repository, e.g.
# data/longbench/...). Run from the repository root, nothing changes.

CALLER_DIR="$PWD"
for name in MODEL_PATH TRAIN_FILES VAL_FILES; do
    value="${!name:-}"
    if [[ -n "$value" && "$value" != /* && "$value" != *"<"* && -e "$CALLER_DIR/$value" ]]; then
        printf -v "$name" '%s' "$CALLER_DIR/$value"
    fi
done
if [[ "$CKPT_DIR" != /* ]]; then
    CKPT_DIR="$CALLER_DIR/$CKPT_DIR"
fi
