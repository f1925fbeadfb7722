"""Fixtures for the verl-on-CPU tests: one Ray cluster per module, tiny models saved to disk."""

import pytest


@pytest.fixture(scope="module")
def ray_cpu_cluster():
    """`ray.init(num_cpus=2)` with the platform's runtime env; shut down after the module."""
    import ray

    from refine.platform import activate, ray_runtime_env

    activate()
    if ray.is_initialized():  # another module's cluster leaked: start from a clean one
        ray.shutdown()
    ray.init(address="local", num_cpus=2, runtime_env=ray_runtime_env(), include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
