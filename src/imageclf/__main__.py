"""``python -m imageclf`` (and ``torchrun -m imageclf train ...``)."""

from .cli import main

main()
