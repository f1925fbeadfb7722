"""The verl glue of ReFINE (see README.md here): the `refine:` config group, the actor worker with the ReFINE
RPCs, `RefineTrainer(RayPPOTrainer)`, the NSP inner step (`nsp_mode` seam) and the Ray task runner.

Importing `refine.trainer` is cheap; import the submodules (`refine.trainer.config`, `.worker`, `.ray_trainer`,
`.nsp_step`, `.task_runner`) where needed.
"""
