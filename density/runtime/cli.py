"""The conventions every top-level command follows.

A user error (a bad value, a missing or unreadable file, a failed download, ...) ends the command with exit status 2
and one `error: ...` line on stderr, no traceback; `--debug` (anywhere on the command line) prints the traceback
before that line. A `SystemExit('message')` is such an error too.

    if __name__ == '__main__':
        cli.run(main)                      # main(argv) -> its return value; argv without --debug

Commands parsing with argparse use `cli.ArgumentParser`: its usage errors are one `error: ...` line as well, and
its --help lists --debug.
"""

import argparse
import sys
import traceback

from density.runtime.download import DownloadError
from density.runtime.engine import EngineError
from density.runtime.run import TrainingAborted

DEBUG = "--debug"
_debug = False  # set while a command runs with --debug
USER_ERRORS = (ValueError, OSError, DownloadError, EngineError, TrainingAborted)  # every project error derives from one


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (status 2) and --debug in --help."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG, action="store_true", help="show the traceback of an error")

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def run(main, argv=None):
    """Call main(argv) under the conventions above; -> what main returns."""
    global _debug
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, outer = DEBUG in argv or _debug, _debug
    _debug = debug  # a command whose main runs another under these conventions keeps --debug
    try:
        return main([a for a in argv if a != DEBUG])
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        fail(e.code, debug)
    except USER_ERRORS as e:
        fail(str(e), debug)
    finally:
        _debug = outer


def fail(message, debug):
    """Print the traceback (debug) and `error: message` on one line, then exit with status 2."""
    if debug:
        traceback.print_exc()
    print("error: " + " ".join(line.strip() for line in message.strip().splitlines()), file=sys.stderr)
    sys.exit(2)


def command(main):
    """Run main under the conventions above as the process's command: exit status main's integer result, else 0."""
    result = run(main)
    sys.exit(result if isinstance(result, int) else 0)
