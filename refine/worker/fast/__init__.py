"""The fast NSP mode (`refine.nsp_mode=fast`, docs/fast_nsp.md): reading a document in segments with cache
snapshots (`ops`), the combined update (`update`), one step on a rank (`step`) and its RPC (`rpcs`)."""
