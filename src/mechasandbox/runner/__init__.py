"""The process runner: the only code that spawns.

Kept free of imports so that the spawn helper, which imports `runner.helper`, starts small
(its fork cost grows with its own heap).
"""
