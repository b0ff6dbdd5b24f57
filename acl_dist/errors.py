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


class CapacityError(AclDistError):
    """The cluster did not bring up what a run's plan needs in time."""


class ArtifactError(AclDistError):
    """A run artifact (checkpoint, step output) that is missing, unreadable or refused.

    ``str(err)`` names the file. ``refused`` is True when the file was readable but held
    something acl-dist never loads (pickled Python objects other than tensors and plain
    data) or JSON of the wrong shape for its schema (``"steps.round_0.train.seconds:
    expected a number"``): such a file is reported, never skipped or silently replaced
    (``--resume`` reruns only what is missing or truncated).
    """

    def __init__(self, path: str, problem: str, refused: bool = False):
        self.path = path
        self.problem = problem
        self.refused = refused
        super().__init__(f"{path}: {problem}")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``): an error names what
    the user gave (a video id, a key) or quotes a damaged byte, and neither may break the
    message into lines or send escape sequences to the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def find_cause(err: BaseException, types: type | tuple[type, ...]) -> BaseException | None:
    """The first exception of ``types`` behind ``err``: itself, its ``__cause__`` /
    ``__context__``, a Ray task error's ``cause``, or a Ray Train worker group's
    ``worker_failures`` (how errors of remote workers reach the driver)."""
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types):
            inner = getattr(e, "cause", None)
            if isinstance(inner, types) and inner is not e:
                # a Ray task error posing as its cause's class (``as_instanceof_cause``):
                # its text is the remote traceback; the cause's is the message
                todo.insert(0, inner)
                continue
            return e
        todo += [x for x in (getattr(e, "cause", None), e.__cause__, e.__context__)
                 if isinstance(x, BaseException)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo += [x for x in failures.values() if isinstance(x, BaseException)]
    return None
