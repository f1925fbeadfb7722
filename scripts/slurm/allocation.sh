# Sourced by the *.sbatch launchers (after `cd "$REPO"`, with PYTHON set) as
#   source scripts/slurm/allocation.sh LAUNCHER_NAME "$@"
# Reads the SLURM allocation and the launcher's arguments; sets and exports
#   LAUNCHER_ARGS   the arguments without --dry-run (Hydra overrides for the demo script)
#   DRY_RUN         1: print every command instead of running it (--dry-run or DRY_RUN=1); works without SLURM
#   NNODES, NGPUS_PER_NODE    for the demo script (trainer.nnodes, trainer.n_gpus_per_node)
#   CPUS_PER_NODE   (multi-node only) for `ray start --num-cpus`
#   RAY_NODES       (array) the job's hosts, head first
#   RUN_PYTHON      the real interpreter; under a dry run PYTHON becomes a stand-in that prints its command line
# Overrides: GPUS_PER_NODE, CPUS_PER_NODE (else from the allocation). A missing or bad value stops the launcher
# with one line naming the variable and the fix (exit 2).

LAUNCHER=$1
shift
DRY_RUN=${DRY_RUN:-0}
LAUNCHER_ARGS=()
for arg in "$@"; do
    if [[ "$arg" == --dry-run ]]; then DRY_RUN=1; else LAUNCHER_ARGS+=("$arg"); fi
done
DRY_RUN_EXAMPLE="SLURM_JOB_NUM_NODES=2 SLURM_JOB_NODELIST='node[01-02]' SLURM_GPUS_ON_NODE=4 SLURM_CPUS_PER_TASK=32"
DRY_RUN_EXAMPLE="$DRY_RUN_EXAMPLE bash scripts/slurm/$LAUNCHER --dry-run"

allocation_fail() {  # one line on stderr, exit 2
    echo "$LAUNCHER: $*" >&2
    exit 2
}

is_dry_run() { [[ "$DRY_RUN" == 1 ]]; }

show_or_run() {  # run a command; under a dry run print it instead, shell-quoted
    if is_dry_run; then
        printf '[dry-run]'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

source scripts/slurm/slurm_parse.sh   # expand_nodelist_bash, first_ipv4, gpus_per_node_from

# ---- nodes ------------------------------------------------------------------------------------------------------
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
[[ -n "$NNODES" ]] || allocation_fail "SLURM_JOB_NUM_NODES is not set (not inside a SLURM job). Fix: submit with" \
    "sbatch, or to see the commands without SLURM: $DRY_RUN_EXAMPLE"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || allocation_fail "SLURM_JOB_NUM_NODES=$NNODES is not a positive integer." \
    "Fix: submit with sbatch --nodes=N"
RAY_NODES=()
if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    if command -v scontrol >/dev/null 2>&1; then
        mapfile -t RAY_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    else
        hosts=$(expand_nodelist_bash "$SLURM_JOB_NODELIST") || allocation_fail \
            "SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST cannot be expanded without scontrol. Fix: run where scontrol" \
            "is installed, or give it as a plain list (node01,node02)"
        mapfile -t RAY_NODES <<<"$hosts"
    fi
    if [[ ${#RAY_NODES[@]} -ne "$NNODES" ]]; then
        allocation_fail "SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST names ${#RAY_NODES[@]} host(s) (${RAY_NODES[*]})" \
            "but SLURM_JOB_NUM_NODES=$NNODES. Fix: make them agree"
    fi
elif [[ "$NNODES" -gt 1 ]]; then
    allocation_fail "SLURM_JOB_NODELIST is not set for a $NNODES-node job. Fix: submit with sbatch, or set it" \
        "(e.g. SLURM_JOB_NODELIST='node[01-02]')"
fi

# ---- GPUs and CPUs per node ---------------------------------------------------------------------------------------
if [[ -n "${GPUS_PER_NODE:-}" ]]; then
    gpu_source="GPUS_PER_NODE=$GPUS_PER_NODE"
    NGPUS_PER_NODE=$GPUS_PER_NODE
elif [[ -n "${SLURM_GPUS_PER_NODE:-}" ]]; then
    gpu_source="SLURM_GPUS_PER_NODE=$SLURM_GPUS_PER_NODE"
    NGPUS_PER_NODE=$(gpus_per_node_from "$SLURM_GPUS_PER_NODE") || allocation_fail "$gpu_source: no GPU count in" \
        "it (expected N or type:N). Fix: request GPUs with --gpus-per-node=N, or set GPUS_PER_NODE=N"
elif [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
    gpu_source="SLURM_GPUS_ON_NODE=$SLURM_GPUS_ON_NODE"
    NGPUS_PER_NODE=$SLURM_GPUS_ON_NODE
else
    allocation_fail "no GPU count: none of GPUS_PER_NODE, SLURM_GPUS_PER_NODE, SLURM_GPUS_ON_NODE is set. Fix:" \
        "request GPUs (#SBATCH --gpus-per-node=N or --gres=gpu:N), or set GPUS_PER_NODE=N"
fi
[[ "$NGPUS_PER_NODE" =~ ^[0-9]+$ ]] || allocation_fail "$gpu_source is not a GPU count. Fix: set GPUS_PER_NODE=N"
[[ "$NGPUS_PER_NODE" -gt 0 ]] || allocation_fail "$gpu_source: this job has no GPUs per node. Fix: request" \
    "GPUs (#SBATCH --gpus-per-node=N or --gres=gpu:N), or set GPUS_PER_NODE=N"
NGPUS_PER_NODE=$((10#$NGPUS_PER_NODE))

if [[ "$NNODES" -gt 1 ]]; then  # single-node jobs let ray.init() see the node's CPUs itself
    if [[ -n "${CPUS_PER_NODE:-}" ]]; then cpu_source=CPUS_PER_NODE
    elif [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then cpu_source=SLURM_CPUS_PER_TASK
    elif [[ -n "${SLURM_CPUS_ON_NODE:-}" ]]; then cpu_source=SLURM_CPUS_ON_NODE
    else
        allocation_fail "no CPU count per node: none of CPUS_PER_NODE, SLURM_CPUS_PER_TASK, SLURM_CPUS_ON_NODE is" \
            "set. Fix: #SBATCH --cpus-per-task=N (with --ntasks-per-node=1), or set CPUS_PER_NODE=N"
    fi
    CPUS_PER_NODE=${!cpu_source}
    [[ "$CPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || allocation_fail "$cpu_source=$CPUS_PER_NODE is not a positive CPU" \
        "count. Fix: #SBATCH --cpus-per-task=N, or set CPUS_PER_NODE=N"
    export CPUS_PER_NODE
fi
export NNODES NGPUS_PER_NODE DRY_RUN
echo "$LAUNCHER: $NNODES node(s)${RAY_NODES[*]:+ (${RAY_NODES[*]})}, $NGPUS_PER_NODE GPU(s) per node ($gpu_source)"

RUN_PYTHON=$PYTHON
if is_dry_run; then  # the demo script runs as usual up to `$PYTHON -m refine.main ...`, which only prints
    export DRY_RUN_PYTHON=$RUN_PYTHON
    export PYTHON="$PWD/scripts/slurm/dry_run_python.sh"
fi
