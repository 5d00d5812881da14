"""``imageclf serve keys``: make the API keys that ``serve --api-keys FILE`` accepts."""

from __future__ import annotations

import click

from ..fileio import printable


@click.group("keys")
def keys_command() -> None:
    """Make API keys for 'imageclf serve --api-keys FILE' (docs/limits.md)."""


@keys_command.command("add")
@click.argument("name")
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The key file (made, readable by you only, if missing).",
)
@click.option(
    "--rate",
    default=None,
    help="This key's quota: requests per second, or N/min, N/h; none: unlimited "
    "(default: serve's --key-rate).",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=None,
    help="Requests this key may make at once before its rate applies.",
)
def keys_add(name: str, path: str, rate: str | None, burst: int | None) -> None:
    """Make a random key called NAME, add its hash to the key file and print the key.

    Only the hash is stored: the key is shown this once. Restart the server to use it."""
    from ..web.keys import add_key

    key = add_key(path, name, rate, burst)
    click.echo(key)
    click.echo(
        f"added {printable(name)} to {printable(path)}; this is the only time the key is shown",
        err=True,
    )
