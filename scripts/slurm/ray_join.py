"""Wait, at most TIMEOUT seconds, until every named node has joined the Ray cluster at ADDRESS (used by
scripts/slurm/ray_cluster.sh after each `ray start`).

    python scripts/slurm/ray_join.py HEAD_IP:PORT TIMEOUT_S NODE [NODE ...]

A node counts as joined when an alive Ray node has it as its name (`ray start --node-name`) or as its short host
name. Exit 0 once all have joined; otherwise exit 1 with one line naming the missing nodes. Poll interval:
RAY_JOIN_POLL seconds (default 5).
"""

from __future__ import annotations

import os
import socket
import sys
import time


def head_reachable(address: str, deadline: float) -> bool:
    """Whether the head's port accepts connections before the deadline. Checked first because `ray.init` on an
    address nothing listens on blocks for minutes, whatever the timeout here."""
    host, port = address.rsplit(":", 1)
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(poll_seconds(), max(0.0, deadline - time.monotonic())))


def poll_seconds() -> float:
    return float(os.environ.get("RAY_JOIN_POLL", "5"))


def short(name: str) -> str:
    return name.split(".", 1)[0]


def alive_names(nodes: list[dict]) -> set[str]:
    """Names of the alive nodes of `ray.nodes()`: node name and short host name."""
    names = set()
    for node in nodes:
        if node.get("Alive"):
            names.update(short(str(node[key])) for key in ("NodeName", "NodeManagerHostname") if node.get(key))
    return names


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(f"usage: {sys.argv[0]} HEAD_IP:PORT TIMEOUT_S NODE [NODE ...]", file=sys.stderr)
        return 2
    address, timeout, expected = argv[0], float(argv[1]), argv[2:]
    deadline = time.monotonic() + timeout

    def fail(missing: list[str], joined: list[str], why: str) -> int:
        print(f"ray_join: {len(missing)} of {len(expected)} node(s) not in the Ray cluster at {address} after "
              f"{timeout:g} s ({why}): {' '.join(missing)}; joined: {' '.join(joined) or 'none'}. Fix: see the "
              f"`ray start` output of those nodes above, or raise RAY_JOIN_TIMEOUT", file=sys.stderr, flush=True)
        return 1

    if not head_reachable(address, deadline):
        return fail(expected, [], "the head's port never answered")
    import ray

    while True:  # the port opens before the head is ready: retry until the deadline
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            break
        except (ConnectionError, RuntimeError) as error:  # also an authentication mismatch (seen: ConnectionError)
            if time.monotonic() >= deadline:
                print(f"ray_join: cannot connect to the Ray cluster at {address} within {timeout:g} s: "
                      f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}. Fix: see the head's "
                      "`ray start` output above; RAY_AUTH_MODE / RAY_AUTH_TOKEN must be the same for every node and "
                      "the trainer", file=sys.stderr, flush=True)
                return 1
            time.sleep(min(poll_seconds(), max(0.0, deadline - time.monotonic())))
    try:
        while True:
            alive = alive_names(ray.nodes())
            missing = [node for node in expected if short(node) not in alive]
            if not missing:
                print(f"ray: {len(expected)} of {len(expected)} node(s) joined: {' '.join(expected)}", flush=True)
                return 0
            if time.monotonic() >= deadline:
                return fail(missing, [node for node in expected if node not in missing], "not alive")
            time.sleep(min(poll_seconds(), max(0.0, deadline - time.monotonic())))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
