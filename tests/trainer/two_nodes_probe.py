"""Two Ray nodes on one machine, a CPU mid-training across them, and the loss of one: `python
tests/trainer/two_nodes_probe.py OUT.json RUN_DIR` (a process of its own: it starts, joins and stops its own Ray
cluster). Judged by tests/trainer/test_two_nodes_ray.py.

Ray's `cluster_utils.Cluster`: a head ("refine-head", 2 CPUs) and later a second raylet ("refine-node2", 1 CPU),
each a node of its own (own raylet, object store, node id). In order:
1. world size 2 on the head alone (`trainer.nnodes=1 trainer.n_gpus_per_node=2`): the reference metrics;
2. one head CPU is then held by a placement group, so each node has room for exactly one worker bundle; the second
   node joins; `scripts/slurm/ray_join.py` (the launchers' wait for the nodes) waits for both names;
3. `trainer.nnodes=2 trainer.n_gpus_per_node=1`, a checkpoint every step: the placement groups' bundles (Ray's
   placement) are recorded; at the start of step 3 the second node's raylet is killed; the error and the line
   `refine.main` prints for it are recorded;
4. the node comes back (a new raylet of the same name) and the same configuration resumes from step 2 to step 4.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
# a dead raylet (its port refuses at once) seen within ~3 s instead of Ray's ~15 s; the timeout stays long enough
# for a live raylet on busy cores (a 200 ms one failed the head's own start-up on 2 loaded cores)
FAST_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_timeout_ms": 5000,
                     "health_check_failure_threshold": 3}


def trainer_helpers():
    """tests/trainer/conftest.py by path (FAST_OVERRIDES, close_trainer): this script is no pytest module."""
    spec = importlib.util.spec_from_file_location("trainer_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_records(trainer) -> dict[int, dict]:
    return {r["step"]: r for r in trainer.history if "training/global_step" in r}


def placement(trainer) -> list[str]:
    """The node name of each worker bundle, from Ray's placement-group table."""
    import ray

    names = {node["NodeID"]: node["NodeName"] for node in ray.nodes()}
    bundles = []
    for pool in trainer.resource_pool_manager.resource_pool_dict.values():
        for pg in pool.pgs:
            table = ray.util.placement_group_table(pg)
            bundles += [names[node_id] for _, node_id in sorted(table["bundles_to_node_id"].items())]
    return bundles


def main(out_path: Path, run_dir: Path) -> None:
    import ray
    import ray._private.utils as ray_utils
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group

    import refine.platform
    from refine.driver.task_runner import build_trainer
    from refine.main import dead_worker_message, node_loss_wait, worker_died
    from refine.platform import ray_runtime_env
    from refine.preflight.compose import compose
    from refine.preflight.prepare import prepare

    # Cluster() records its address as the machine's "current cluster", which any ray.init() without an address
    # (other runs on this machine) would join: this one stays private
    ray_utils.write_ray_address = lambda *args, **kwargs: None
    refine.platform.activate()
    helpers = trainer_helpers()
    common = ["trainer.total_training_steps=%d" % STEPS, "trainer.save_freq=1", "trainer.resume_mode=auto"]
    two_nodes = ["trainer.nnodes=2", "trainer.n_gpus_per_node=1", f"trainer.default_local_dir={run_dir / 'two'}"]
    result: dict = {}

    def trainer_for(overrides):
        config = compose(helpers.FAST_OVERRIDES + common + overrides)
        prepare(config)
        trainer = build_trainer(config)
        trainer.init_workers()
        return trainer

    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(num_cpus=2, node_name="refine-head", include_dashboard=False,
                         _system_config=FAST_HEALTH_CHECK)
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env=ray_runtime_env({"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}))
        start = time.time()
        reference = trainer_for(["trainer.nnodes=1", "trainer.n_gpus_per_node=2",
                                 f"trainer.default_local_dir={run_dir / 'one'}"])
        result["one_node_placement"] = placement(reference)
        reference.fit()
        result["one_node"] = step_records(reference)
        helpers.close_trainer(reference)
        result["one_node_s"] = time.time() - start

        hold = placement_group([{"CPU": 1}], strategy="STRICT_PACK")  # on the head: the only node so far
        ray.get(hold.ready(), timeout=60)
        node2 = cluster.add_node(num_cpus=1, node_name="refine-node2")
        join = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/slurm/ray_join.py"), cluster.address, "60",
                               "refine-head", "refine-node2"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RAY_JOIN_POLL": "0.2"})
        result["join"] = [join.returncode, join.stdout + join.stderr]

        start = time.time()
        first = trainer_for(two_nodes)
        result["two_node_placement"] = placement(first)
        inner, lost = first.inner_loop, []

        def lose_the_second_node_at_step_3(batch, **kwargs):
            if first.global_steps == 3 and not lost:
                node2.kill_raylet()
                lost.append(time.time())
            return inner(batch, **kwargs)

        first.inner_loop = lose_the_second_node_at_step_3
        try:
            first.fit()
            result["loss_error"] = None
        except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
            result["loss_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            result["worker_died"] = worker_died(exc, wait_s=node_loss_wait(first.config))  # as refine.main does
            result["message"] = dead_worker_message(exc, first.config)
            result["failed_after_s"] = time.time() - lost[0] if lost else None
        result["before_loss"] = step_records(first)
        helpers.close_trainer(first)

        cluster.add_node(num_cpus=1, node_name="refine-node2")  # the machine is back
        resumed = trainer_for(two_nodes)
        result["resumed_placement"] = placement(resumed)
        resumed.fit()
        result["resumed"] = step_records(resumed)
        helpers.close_trainer(resumed)
        result["two_node_s"] = time.time() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
    out_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
