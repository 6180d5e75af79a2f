"""SIGTERM / Ctrl-C as an exception, and the signal kept until it can be raised.

The handlers (``ddapp.cli.raise_on_signals``) raise ``Interrupted``. A signal that arrives while
Python runs a finaliser (a weakref callback, ``__del__``) cannot end the program that way: the
exception is printed as "ignored" and dropped, and Lightning's own SIGTERM handler has already
asked the trainer to stop early. So the handler notes the signal first, and the code that would
otherwise carry on (after each distilled class, after a student's fit, after the task) raises
it (``raise_pending``), and the handlers are installed again so that a second signal is heard;
Lightning's early stop, a ``SystemExit`` with status 0, is reported as the signal it was.
"""

from __future__ import annotations

_PENDING: list[int] = []


class Interrupted(BaseException):
    """A BaseException, so that neither the task's error handling nor Lightning's (which turns
    SIGTERM into a silent graceful stop, and Ctrl-C into ``sys.exit(1)``) swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def interrupt(signum: int) -> None:
    """Note the signal, then raise it."""
    _PENDING[:] = [signum]
    raise Interrupted(signum)


def keep_dropped_quietly(rearm) -> None:
    """An ``Interrupted`` a finaliser drops is kept (``interrupt``), so Python need not print
    it as an ignored exception with its traceback, and ``rearm()`` installs the handlers again
    (they ignore further signals once one is raised); anything else is printed as before."""
    import sys

    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            rearm()
        else:
            default(unraisable)

    sys.unraisablehook = hook


def pending() -> int | None:
    """The signal noted, if any."""
    return _PENDING[0] if _PENDING else None


def raise_pending() -> None:
    """Raise the signal a finaliser swallowed, if one did."""
    if _PENDING:
        raise Interrupted(_PENDING[0])
