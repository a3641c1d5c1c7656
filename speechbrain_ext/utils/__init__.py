"""Plumbing shared by the stage scripts: safe I/O, atomic checkpoints,
command-line handling, non-finite checks, folder locks, random states and
the epoch log.
"""
