# Sourced by the *.sbatch launchers after allocation.sh. Multi-node jobs: start a Ray cluster over RAY_NODES (head
# on the first node, one worker per other node, each under srun, as verl's examples/slurm/ray_on_slurm.slurm
# does) and export RAY_ADDRESS so that verl's `ray.init()` joins it. Each start is followed by a bounded wait
# (scripts/slurm/ray_join.py, at most RAY_JOIN_TIMEOUT seconds, default 300): first for the head, then for every
# node; a node that has not joined by then stops the launcher naming it (exit 1) instead of training on part of
# the job. Single-node jobs skip all this: `ray.init()` starts a local instance.
# Optional: RAY_PORT (6379); HEAD_IP, the head's IPv4 address (default: the first IPv4 address, loopback
# excluded, of `hostname --ip-address` then `hostname -I` on the head node; the first word may be IPv6);
# RAY_AUTH_MODE, RAY_AUTH_TOKEN (default: token mode with a fresh token per job, see below).
# Under a dry run every command is printed instead (the head address as a placeholder unless HEAD_IP is set).

if [[ "$NNODES" -gt 1 ]]; then
    RAY_PORT=${RAY_PORT:-6379}
    RAY_JOIN_TIMEOUT=${RAY_JOIN_TIMEOUT:-300}
    [[ "$RAY_JOIN_TIMEOUT" =~ ^[0-9]+([.][0-9]+)?$ ]] || allocation_fail "RAY_JOIN_TIMEOUT=$RAY_JOIN_TIMEOUT is" \
        "not a number of seconds. Fix: e.g. RAY_JOIN_TIMEOUT=300"
    RAY_HEAD=${RAY_NODES[0]}
    SRUN_ONE=(srun --nodes=1 --ntasks=1)
    if [[ -n "${HEAD_IP:-}" ]]; then
        [[ "$HEAD_IP" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || allocation_fail "HEAD_IP=$HEAD_IP is not an IPv4" \
            "address. Fix: set HEAD_IP to the IPv4 address of $RAY_HEAD, or unset it to look it up"
        RAY_HEAD_IP=$HEAD_IP
    elif is_dry_run; then
        echo "head IPv4: the first IPv4 address (not 127.*) printed by these, in order:"
        show_or_run "${SRUN_ONE[@]}" -w "$RAY_HEAD" hostname --ip-address
        show_or_run "${SRUN_ONE[@]}" -w "$RAY_HEAD" hostname -I
        RAY_HEAD_IP="<first-IPv4-of-$RAY_HEAD>"
    else
        head_addresses=$("${SRUN_ONE[@]}" -w "$RAY_HEAD" hostname --ip-address 2>/dev/null) || true
        if ! RAY_HEAD_IP=$(first_ipv4 <<<"$head_addresses"); then
            head_addresses+=" $("${SRUN_ONE[@]}" -w "$RAY_HEAD" hostname -I 2>/dev/null || true)"
            RAY_HEAD_IP=$(first_ipv4 <<<"$head_addresses") || allocation_fail "no IPv4 address for the head node" \
                "$RAY_HEAD (hostname --ip-address, hostname -I there: '$(echo $head_addresses)'). Fix: set" \
                "HEAD_IP=<its IPv4 address>"
        fi
    fi
    export RAY_ADDRESS="$RAY_HEAD_IP:$RAY_PORT"
    # Ray 2.60: `ray start --head` turns token authentication on when a token exists (~/.ray/auth_token, written by
    # any earlier local ray.init()), workers and drivers only with RAY_AUTH_MODE=token, and refuse each other
    # otherwise. So: token mode for every process of the job, one token per job unless one is given (srun passes
    # the environment on to every node).
    export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
    if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        if is_dry_run; then
            echo "[dry-run] export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<random-64-hex-digits-per-job>"
        else
            RAY_AUTH_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
            export RAY_AUTH_TOKEN
        fi
    fi
    echo "ray head $RAY_HEAD ($RAY_ADDRESS), ${#RAY_NODES[@]} nodes: ${RAY_NODES[*]}"

    RAY_START_PIDS=()
    ray_start_on() {  # NODE ARGS...: `ray start ARGS` there, in the background (--block: lives as long as the job)
        local node=$1
        shift
        local command=("${SRUN_ONE[@]}" -w "$node" ray start "$@" --node-name="$node" --num-gpus="$NGPUS_PER_NODE"
                       --num-cpus="$CPUS_PER_NODE" --block)
        if is_dry_run; then
            show_or_run "${command[@]}"
        else
            "${command[@]}" &
            RAY_START_PIDS+=($!)
        fi
    }
    wait_for_nodes() {  # NODE...: bounded wait until they have joined; else stop the started ray processes, exit 1
        show_or_run "$RUN_PYTHON" scripts/slurm/ray_join.py "$RAY_ADDRESS" "$RAY_JOIN_TIMEOUT" "$@" && return 0
        [[ ${#RAY_START_PIDS[@]} -eq 0 ]] || kill "${RAY_START_PIDS[@]}" 2>/dev/null || true
        exit 1
    }
    ray_start_on "$RAY_HEAD" --head --node-ip-address="$RAY_HEAD_IP" --port="$RAY_PORT"
    wait_for_nodes "$RAY_HEAD"
    for node in "${RAY_NODES[@]:1}"; do
        ray_start_on "$node" --address="$RAY_ADDRESS"
    done
    wait_for_nodes "${RAY_NODES[@]}"
    if is_dry_run; then
        show_or_run export RAY_ADDRESS="$RAY_ADDRESS"
    fi
fi
