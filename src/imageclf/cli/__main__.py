"""``python -m imageclf.cli`` (the same as ``python -m imageclf``)."""

from .entry import main

main()
