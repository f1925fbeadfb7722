"""Runs side by side: each run folder's state (`state`), a summary of one run (`summary`), the list of runs under a
folder and the comparison of several (`compare`); `python -m refine.runs` is the command line (`__main__`).

Light on purpose: the trainer writes the state through it and the checks before Ray read it.
"""
