"""Errors the user caused (bad input), reported by the CLI as one line with a non-zero exit code."""


class ScopeError(Exception):
    """A clear, one-line problem with the user's input. Exit code 2 unless said otherwise."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ValidationFailed(ScopeError):
    """An artifact was read but failed validation (exit code 1)."""

    exit_code = 1
