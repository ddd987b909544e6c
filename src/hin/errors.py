"""The one base class of every error hin raises about what a user gave it.

The command line prints a `HINError` as one line and exits 2; anything else is a bug and
keeps its traceback. Each subclass also derives from the builtin type that fits it
(ValueError, FileNotFoundError, ...) so library callers can catch either.
"""


class HINError(Exception):
    """Bad input, a missing or malformed file, an unusable setting: the message says what is
    wrong, where, and what to do about it."""


class UsageError(HINError, ValueError):
    """An argument, option or input tensor that cannot be used as given."""


class MissingExtraError(HINError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class Interrupted(HINError):
    """Ctrl-C or SIGTERM stopped a command; the message says what was kept and how to go on.
    The command line prints it as one line and exits 130."""


DISTRIBUTION = "hin-caption"   # the name on the package index, where `hin` is another project


def pip_install(extra: str) -> str:
    """The one way messages spell installing an extra: `pip install 'hin-caption[plot]'`."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"
