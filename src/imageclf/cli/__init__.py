"""The ``imageclf`` command line: parse, call one library function, print.

One module per command (group); ``entry.py`` holds the ``imageclf`` group and ``main``,
the console script. Errors meant for the user become one line on stderr and exit code 2
(bad input) or 1 (failure); anything else is a bug and keeps its traceback.
"""

from .entry import cli, main

__all__ = ["cli", "main"]
