"""Everything checked before Ray starts, in one-way order: the `refine:` schema (`schema`) -> the official-key
aliases (`aliases`) -> cross-field rules (`rules`, `fast_mode`) -> data / model / launch checks and the run record
-> the memory estimate -> `prepare` (the sequence `python -m refine.main` runs). `compose` builds the config from
`configs/`. Knows nothing of the driver or the worker."""
