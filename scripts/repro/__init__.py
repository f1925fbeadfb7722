"""Small-scale reproduction study of the ReFINE claim (issue 13): `python scripts/repro/run.py [--quick]`."""
