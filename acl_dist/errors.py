"""Error types. Every data problem names the video (when there is one) and the problem."""

from __future__ import annotations


class AclDistError(Exception):
    """Base class of errors the CLI reports as one clear line (no traceback)."""


class DataError(AclDistError):
    """A problem with one input video or annotation.

    ``str(err)`` reads ``"<video>: <problem>"`` so the message always names the video.
    """

    def __init__(self, video: str | None, problem: str):
        self.video = video
        self.problem = problem
        super().__init__(f"{video}: {problem}" if video else problem)


class StoreError(AclDistError):
    """A feature store that is missing, unreadable, incomplete or of an unknown format."""


class ConfigError(AclDistError):
    """A bad option, config key or argument combination."""
