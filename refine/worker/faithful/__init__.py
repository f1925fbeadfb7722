"""The faithful NSP mode (the official algorithm): one RPC per worker-side step (`rpcs`), on the shared model
operations of `refine.worker.model_ops`."""
