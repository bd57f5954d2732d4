"""Errors that reach the user as one clear line."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input: names the file, and where known the line and the field.

    The CLI prints ``str(error)`` on one line and exits with status 2.
    """

    def __init__(
        self,
        path: str | Path | None,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path or ("" if field is not None else "<input>")
        if line is not None:
            where += f":{line}"
        if field is not None:
            where = f"{where}: {field}" if where else field  # an option: its name alone
        super().__init__(f"{where}: {message}")
