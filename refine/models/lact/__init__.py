"""LaCT model (filled in by the LaCT work)."""
