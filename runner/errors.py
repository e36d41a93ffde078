"""Typed errors that tell the user how to fix the problem.

Every error a user can cause is a `RunnerError` (a `click.ClickException`), so the CLI prints its message and
exits with its code, never a traceback. Messages follow one shape: what is wrong, then numbered "To fix:" steps.
"""

from __future__ import annotations

import click


class RunnerError(click.ClickException):
    """A problem the user can fix; `fixes` are printed as numbered steps."""

    exit_code = 1

    def __init__(self, message: str, fixes: list[str] | tuple[str, ...] = ()):
        self.fixes = list(fixes)
        text = message.rstrip()
        if self.fixes:
            steps = "\n".join(f"  {i}. {fix}" for i, fix in enumerate(self.fixes, 1))
            text += f"\nTo fix:\n{steps}"
        super().__init__(text)


class PlanError(RunnerError):
    """The requested recipe / model / GPU count cannot make a valid plan."""


class StorageError(RunnerError):
    """The storage URL is malformed, unreachable, or refuses our credentials."""


class NanochatError(RunnerError):
    """The nanochat checkout or its Python environment is missing or at the wrong commit."""


class PreseedError(RunnerError):
    """A file the run needs could not be downloaded before training started."""

    exit_code = 5


class PhaseFailed(RunnerError):
    """A phase whose outputs later phases need has failed; the run stops."""

    exit_code = 4


class TransferError(RunnerError):
    """A file did not arrive whole (missing or wrong size) after a copy."""
