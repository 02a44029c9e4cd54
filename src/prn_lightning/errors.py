"""The user-facing error types, at the bottom of the import order so every layer can raise them.

A `PRNUserError` is a mistake the user can fix (a config value, a dataset, a file); its message names the key, file
or value and says how to fix it. The CLI prints it as one line, without a traceback (`--debug` shows it).
"""
from __future__ import annotations


class PRNUserError(ValueError):
    """A problem the user can fix; the message names what is wrong and how to fix it."""


class ConfigError(PRNUserError):
    """A config key or value that cannot be used (unknown key, wrong type, out of range)."""


class DatasetError(PRNUserError):
    """A dataset that cannot be used as configured (missing folder, unknown category, image without mask, ...)."""
