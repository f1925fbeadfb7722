"""The Ray driver: the task runner, `RefineTrainer(RayPPOTrainer)` and its loop, the NSP step as a sequence of
worker calls (`nsp_step`: the faithful / fast seam), the outer task update, validation, checkpoints, health,
predictions and the plot. Talks to the workers only through their RPCs and `refine.settings`."""
