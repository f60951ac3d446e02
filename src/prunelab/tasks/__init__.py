"""Tasks of graded difficulty: each task declares its family, difficulty axis and level.

Kept light on purpose: importing `prunelab.tasks` loads no data and no model code.
Use `prunelab.tasks.registry.get_tasks([...])` / `list_tasks()`.
"""
