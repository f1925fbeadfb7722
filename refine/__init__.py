"""ReFINE: Reinforced Fast weIghts with Next sEquence prediction, built on verl 0.9.1.

Importing `refine` is cheap; heavy pieces live in sub-packages:
`refine.nsp` (the algorithm as tensor functions), `refine.data`, `refine.scoring`, `refine.models`,
`refine.platform` (verl CPU plugin), `refine.preflight` (the checks before Ray), `refine.driver` (the Ray driver),
`refine.worker` (the actor worker: faithful and fast NSP), `refine.settings` (what the driver sends the worker) and
`refine.main` (Hydra entry point).
"""

__version__ = "0.1.0"
