"""User-facing errors.

A `PrunelabError` is a problem with the user's input or environment that the user can fix.
The CLI prints its message on one line and exits with status 2, without a traceback.
Its message should name the problem *and* the fix.
"""


class PrunelabError(Exception):
    """A problem the user can fix; shown as one line, exit status 2."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)

    def __reduce__(self):  # travels whole from a worker process: the problem and its fix
        return (type(self), (self.problem, self.fix), self.__dict__)
