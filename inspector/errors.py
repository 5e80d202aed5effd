"""Errors a user can act on; the CLI turns them into a message and an exit code, never a traceback."""

from __future__ import annotations


class InspectorError(Exception):
    """Base of every error the CLI reports as a plain message."""

    exit_code = 1


class InputError(InspectorError):
    """Bad input from the user: a path, a file, a flag value. Exit code 2."""

    exit_code = 2


class ConfigError(InspectorError):
    """Invalid configuration; `errors` holds one `dotted.path: message` line each. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class ModelError(InspectorError):
    """A model that cannot be used as configured (manifest, hash, shapes). Exit code 2."""

    exit_code = 2
