"""The one error type of the data layer.

Every dataset problem (missing folder, unknown category, image without mask, failed download) is raised as a
`DatasetError` whose message names the file, folder, URL or config key involved and says how to fix it, so a user
never has to read a traceback to know what to do.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message names what is wrong and how to fix it."""
