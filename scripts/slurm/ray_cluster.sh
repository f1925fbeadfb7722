# Sourced by the *.sbatch launchers: start a Ray cluster over the nodes of this SLURM job (head on the first node,
# one worker per other node), as verl's multi-node SLURM recipe does, and export RAY_ADDRESS so that verl's
# `ray.init()` joins it. Single-node jobs skip this: `ray.init()` then starts a local instance.
# Needs: GPUS_PER_NODE, CPUS_PER_NODE; optional RAY_PORT (default 6379).

if [[ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]]; then
    RAY_PORT=${RAY_PORT:-6379}
    mapfile -t RAY_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    RAY_HEAD=${RAY_NODES[0]}
    RAY_HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$RAY_HEAD" hostname --ip-address | awk '{print $1}')
    export RAY_ADDRESS="$RAY_HEAD_IP:$RAY_PORT"
    echo "ray head $RAY_HEAD ($RAY_ADDRESS), ${#RAY_NODES[@]} nodes"
    srun --nodes=1 --ntasks=1 -w "$RAY_HEAD" \
        ray start --head --node-ip-address="$RAY_HEAD_IP" --port="$RAY_PORT" \
        --num-gpus="$GPUS_PER_NODE" --num-cpus="$CPUS_PER_NODE" --block &
    sleep 15
    for node in "${RAY_NODES[@]:1}"; do
        srun --nodes=1 --ntasks=1 -w "$node" \
            ray start --address="$RAY_ADDRESS" --num-gpus="$GPUS_PER_NODE" --num-cpus="$CPUS_PER_NODE" --block &
    done
    # Wait until every node has joined (ray status lists one "node_" line per alive node).
    for _ in $(seq 60); do
        alive=$(ray status --address="$RAY_ADDRESS" 2>/dev/null | grep -c " node_" || true)
        [[ "$alive" -ge "${#RAY_NODES[@]}" ]] && break
        sleep 5
    done
    echo "ray nodes alive: ${alive:-0} of ${#RAY_NODES[@]}"
fi
