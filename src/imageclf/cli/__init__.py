"""The ``imageclf`` command line: parse, call one library function, print.

One module per command (group); ``entry.py`` holds the ``imageclf`` group and ``main``,
the console script. Errors meant for the user become one line on stderr and exit code 2
(bad input) or 1 (failure); anything else is a bug and keeps its traceback.
"""

import sys

try:
    from .entry import cli, main
except KeyboardInterrupt:  # Ctrl-C while the commands' modules load (torch: a second or two)
    sys.stderr.write("imageclf: interrupted\n")
    raise SystemExit(130) from None

__all__ = ["cli", "main"]
