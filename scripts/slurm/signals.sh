# Sourced by the *.sbatch launchers after allocation.sh. Preemption and time limits:
#  - each launcher asks SLURM for SIGUSR1 to its batch shell ahead of the time limit (`#SBATCH --signal=B:USR1@600`,
#    600 s; `sbatch --signal=B:USR1@<seconds> ...` changes it: leave time for one training step plus one save).
#    `B:` sends it to this shell only, never to the Ray processes: this shell forwards it (and SIGTERM) to the
#    trainer, which finishes its step, writes a complete checkpoint and exits with PREEMPTED_EXIT_STATUS;
#  - the training launchers are submitted with `--requeue`: on that status the job puts itself back in the queue
#    (`scontrol requeue`), and the requeued job resumes in the same run folder (trainer.resume_mode=auto, whose
#    same-run check applies). A finished or failed run is never requeued. REQUEUE=0 turns the requeue off.
# Under a dry run the trap and the requeue are printed instead.

PREEMPTED_EXIT_STATUS=75   # refine/driver/preemption.py (sysexits' EX_TEMPFAIL: "try again")
REQUEUE=${REQUEUE:-1}

show_signal_plan() {  # LAUNCHER_FILE: what the job asked SLURM for and what this shell does with it
    local request
    request=$(grep -m1 -o -- '--signal=[^ ]*' "$1" || echo "none")
    echo "signals: SLURM sends SIGUSR1 ahead of the time limit as requested ($request; sbatch --signal=B:USR1@<s>" \
        "changes it); USR1 and TERM are forwarded to the trainer, which checkpoints and exits $PREEMPTED_EXIT_STATUS"
}

run_forwarding_signals() {  # COMMAND...: run it in the background, forward USR1 / TERM to it, return its status
    if is_dry_run; then
        show_or_run trap "kill -USR1 <trainer-pid>" USR1
        show_or_run trap "kill -TERM <trainer-pid>" TERM
    fi
    "$@" &
    local child=$! status=0
    # shellcheck disable=SC2064 - the child's pid is fixed now
    trap "kill -USR1 $child 2>/dev/null || true" USR1
    # shellcheck disable=SC2064
    trap "kill -TERM $child 2>/dev/null || true" TERM
    while true; do
        status=0
        wait "$child" || status=$?
        # a trapped signal interrupts `wait` (status > 128) while the trainer still runs: wait again
        kill -0 "$child" 2>/dev/null || break
    done
    trap - USR1 TERM
    return "$status"
}

requeue_if_stopped() {  # STATUS RUN_DIR: after a stop on a signal, put the job back in the queue (it resumes there)
    [[ "$1" -eq "$PREEMPTED_EXIT_STATUS" ]] || is_dry_run || return 0
    local command=(scontrol requeue "${SLURM_JOB_ID:-<SLURM_JOB_ID>}")
    if is_dry_run; then
        echo "on exit status $PREEMPTED_EXIT_STATUS (stopped on a signal, checkpoint complete) the job requeues" \
            "itself and resumes in $2 (REQUEUE=$REQUEUE):"
        [[ "$REQUEUE" == 1 ]] && show_or_run "${command[@]}"
        return 0
    fi
    if [[ "$REQUEUE" != 1 || -z "${SLURM_JOB_ID:-}" ]]; then
        echo "$LAUNCHER: stopped on a signal with a complete checkpoint in $2; not requeued (REQUEUE=$REQUEUE," \
            "SLURM_JOB_ID=${SLURM_JOB_ID:-unset}): submit the same job again to resume" >&2
        return 0
    fi
    echo "$LAUNCHER: stopped on a signal with a complete checkpoint in $2; requeueing job $SLURM_JOB_ID" >&2
    "${command[@]}"
}
