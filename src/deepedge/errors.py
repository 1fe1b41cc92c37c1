"""One error root for the whole project.

Every error a user can cause or meet derives from :class:`DeepEdgeError`; the CLI prints
it as one line plus its hint and exits with the error's ``exit_code``: 2 when the command
line or an input file is wrong (fix the input and run again), 1 when a run failed. Anything
else is a bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ClusterError",
    "DataError",
    "DeepEdgeError",
    "KnowledgeBaseError",
    "MonitorError",
    "PlanInfeasible",
    "SpecError",
    "TrainingError",
    "UsageError",
]

EXIT_FAILURE = 1  # the command ran and failed: a device, worker, store or file let it down
EXIT_USAGE = 2  # the command line or an input file is wrong (click's code for usage errors)


class DeepEdgeError(Exception):
    """Root of all expected deepedge errors. ``hint`` says what the user can do about it."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = str(self).replace("\n", " ")
        return f"{text} (hint: {self.hint})" if self.hint else text


class SpecError(DeepEdgeError):
    """A cluster, device, app, job or plan spec is malformed or contradictory."""

    exit_code = EXIT_USAGE


class UsageError(DeepEdgeError):
    """The command line is wrong: options that do not go together, or a file of the wrong
    kind (a cluster spec where a job spec belongs, a JSON that is no demo report)."""

    exit_code = EXIT_USAGE


class ClusterError(DeepEdgeError):
    """An emulated or real device could not be started, reached or stopped."""


class DataError(DeepEdgeError):
    """A data set could not be found, read or generated."""


class PlanInfeasible(DeepEdgeError):
    """No device can take part in training under the given constraints."""


class CheckpointError(DeepEdgeError):
    """A checkpoint could not be written or failed verification on load."""


class TrainingError(DeepEdgeError):
    """A training run failed: a worker died, diverged or timed out."""


class KnowledgeBaseError(DeepEdgeError):
    """The profile knowledge base is unreadable, corrupt or of another schema version."""


class MonitorError(DeepEdgeError):
    """The monitor's time-series store or metrics endpoint cannot be used."""
