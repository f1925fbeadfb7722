"""The actor worker: `RefineActorWorker(ActorRolloutRefWorker)` with the ReFINE RPCs, their shared helpers
(`rpc`), the model operations both modes share (`model_ops`), and the two NSP modes side by side: `faithful/`
(one RPC per step of the official algorithm) and `fast/` (one RPC, rollouts branched off the recurrent state).
Knows `refine.settings`, `refine.nsp` and `refine.models`, never the driver or the checks before Ray."""
