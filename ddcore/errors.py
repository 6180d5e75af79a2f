"""The one exception type for problems a user can fix (bad config, missing data), and the typed
errors core code raises for the application to turn into such a line."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem in the user's input: ``run.py`` prints its one-line message and exits with 2.

    Messages name the problem and the fix, e.g.
    ``ImageNet folder not found: data/imagenet/train (set paths.data_dir or DD_DATA_DIR)``.
    """


class StorageError(UserError):
    """A user error of the machine's state rather than of a setting (a full disk, a cache entry
    that cannot be read): the same job may succeed once it is fixed, so a driver that records
    settings a dataset cannot take (the reference experiment) retries it instead."""


class CacheUnreadable(Exception):
    """A cache entry whose files cannot be read (truncated weights, broken JSON), raised where it
    is read: ``folder`` is the entry, ``reason`` the first line of the root cause. The application
    says in one line how to rebuild it (``ddapp.stages.build_generator``)."""

    def __init__(self, folder: str | Path, cause: BaseException):
        self.folder, self.reason = Path(folder), first_line(cause)
        super().__init__(f"{self.folder} cannot be read ({self.reason})")


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of the innermost exception of ``exc``'s chain (its root cause)."""
    chain = [exc]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    return (str(chain[-1]).strip().splitlines() or [type(chain[-1]).__name__])[0][:limit]
