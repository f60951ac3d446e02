"""Evaluation: score tasks on a model and keep every example's result.

Kept light on purpose (no torch import here). The entry point is
`prunelab.evaluate.runner.evaluate`, exported as `prunelab.evaluate`.
"""
