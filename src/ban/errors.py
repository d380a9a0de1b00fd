"""Error types raised for bad input. Each names where the problem is (file, record, field)."""

from __future__ import annotations

from os import PathLike


class BanError(Exception):
    """Base class of every error `ban` raises on purpose for bad input or configuration.

    ``every_process``: True on an error that every process of a ``torchrun`` launch raises alike (one process's
    problem, shared: :func:`ban.engine.distributed.gather_or_raise`), so that only the main one reports it.
    """

    every_process = False


class LocatedError(BanError):
    """An error that says which file, which record in it, and which field is wrong.

    >>> str(DataError("not a number", path="a.json", record="question_id=3", field="answer"))
    "a.json: record question_id=3: field 'answer': not a number"
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike[str] | None = None,
        record: object | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.record = record
        self.field = field
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if record is not None:
            parts.append(f"record {record}")
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(message)
        super().__init__(": ".join(parts))


class DataError(LocatedError):
    """A data file (questions, annotations, features, captions, results…) is malformed or inconsistent."""


class CheckpointError(LocatedError):
    """A checkpoint file is not what it claims to be (missing, extra or misshapen tensors, bad config)."""


class ConfigError(BanError):
    """A configuration value or preset is unknown or inconsistent."""
