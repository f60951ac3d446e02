"""Evaluation: score tasks on a model and keep every example's result.

Kept light on purpose (no torch import here). The entry point is
`prunelab.evaluate.runner.evaluate`, public as `prunelab.evaluate_tasks` (a public name never
shadows this package).
"""
