"""ReFINE: Reinforced Fast weIghts with Next sEquence prediction, built on verl 0.9.1.

Importing `refine` is cheap; heavy pieces live in sub-packages:
`refine.nsp` (the algorithm as tensor functions), `refine.data`, `refine.scoring`, `refine.models`,
`refine.platform` (verl CPU plugin), `refine.trainer` (verl glue) and `refine.main` (Hydra entry point).
"""

__version__ = "0.1.0"
