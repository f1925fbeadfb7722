"""The Ray nodes a run lost: named in the one line a run prints when a worker process died (`refine.main`), so
that a multi-node run says which machine went away, not only which process."""

from __future__ import annotations

import time


# How long a multi-node run that failed waits for Ray to report a lost node. The surviving workers' errors (a closed
# gloo connection) arrive at once; Ray marks a node dead only after its health checks fail (measured 2.3 s of
# error vs ~3 s of a 3 x 1 s check; Ray's default check takes ~15 s and more).
NODE_LOSS_WAIT_S = 30.0


def lost_nodes(wait_s: float = 0.0) -> list[str]:
    """'name (address)' of every node of the connected Ray cluster that is no longer alive, waiting up to `wait_s`
    for one to be reported; [] without Ray."""
    import ray  # Ray: only a run whose worker died asks

    deadline = time.monotonic() + wait_s
    while ray.is_initialized():
        try:
            nodes = ray.nodes()
        except Exception:  # noqa: BLE001 - the cluster itself may be gone: the message then names no node
            return []
        lost = [f"{node.get('NodeName') or node.get('NodeID', '?')[:12]} ({node.get('NodeManagerAddress', '?')})"
                for node in nodes if not node.get("Alive", True)]
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(0.5)
    return []
