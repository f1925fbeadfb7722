"""The Ray nodes a run lost: named in the one line a run prints when a worker process died (`refine.main`), so
that a multi-node run says which machine went away, not only which process."""

from __future__ import annotations


def lost_nodes() -> list[str]:
    """'name (address)' of every node of the connected Ray cluster that is no longer alive; [] without Ray."""
    import ray  # Ray: only a run whose worker died asks

    if not ray.is_initialized():
        return []
    try:
        nodes = ray.nodes()
    except Exception:  # noqa: BLE001 - the cluster itself may be gone: the message then names no node
        return []
    return [f"{node.get('NodeName') or node.get('NodeID', '?')[:12]} ({node.get('NodeManagerAddress', '?')})"
            for node in nodes if not node.get("Alive", True)]
