"""Command line: parses arguments, shows progress, calls the library, prints results.

Exit status (``lossdoctor --help`` says the same): 0 done; 1 a failure that is not bad input (the
disk, the machine, a bug in lossdoctor); 2 bad input (an option, the problem file, a checkpoint,
the data); 130 interrupted (Ctrl-C: what finished is printed and saved first). A user's mistake
never prints a traceback: options are checked before any computing (output paths included), and
an error in the user's own problem code shows the user's file and line. ``LOSSDOCTOR_DEBUG=1``
re-raises instead, for the full traceback.

Layout: :mod:`._common` (what every command shares), :mod:`.commands` (the group and the curvature,
training and tour commands), :mod:`.batch` (the batch-size lab), :mod:`.doctor` (diagnose, checkup,
train).
"""

import sys

try:
    from .commands import main
except ModuleNotFoundError as _err:  # the command line needs the 'cli' extra (click, rich)
    if _err.name not in ("click", "rich"):
        raise
    from .._extras import missing

    _message = str(missing(_err.name, "the lossdoctor command line"))

    def main() -> None:  # type: ignore[misc]
        """Say which extra the command line needs, and exit with status 1."""
        sys.exit(f"error: {_message}")


__all__ = ["main"]
