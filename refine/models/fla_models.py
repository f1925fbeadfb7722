"""fla model registration and the CPU-kernel switch (filled in by the Foundation work)."""
