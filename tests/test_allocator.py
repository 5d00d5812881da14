"""The command line keeps freed tensor memory in the heap (allocator.py). Each case runs in
its own interpreter: the setting belongs to a whole process and cannot be undone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt only",
)

# Ten forward passes of two convolutions over 32 pictures of 128 px: each activation is
# 64 MiB, over glibc's 32 MiB mmap ceiling. Counts the page faults the last eight cost
# (the first two grow the heap); ``setup`` runs first.
PROBE = """
import json, resource, torch
from imageclf import allocator
{setup}
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1)
)
x = torch.randn(32, 3, 128, 128)
with torch.inference_mode():
    net(x), net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        net(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"kept": allocator.kept(), "faults": faults}}))
"""


def probe(setup: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    environ.pop("IMAGECLF_KEEP_FREED_MEMORY", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_not_faulted_in_again():
    # Without the setting each pass faults ~98,000 pages (its 64 MiB activations) again.
    default = probe("")
    kept = probe("allocator.keep_freed_memory()")
    assert default == {"kept": False, "faults": default["faults"]}
    assert default["faults"] > 300_000
    assert kept["kept"] is True
    assert kept["faults"] < 60_000  # at most a growth or two of the heap, not every pass


def test_the_command_line_turns_it_on():
    setup = (
        "from imageclf.cli.entry import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass"
    )
    assert probe(setup)["kept"] is True


@pytest.mark.parametrize(
    "env",
    [
        {"IMAGECLF_KEEP_FREED_MEMORY": "0"},
        {"IMAGECLF_KEEP_FREED_MEMORY": "off"},
        {"MALLOC_MMAP_THRESHOLD_": "65536"},  # the user's own malloc settings win
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"},
    ],
)
def test_opting_out_or_own_settings_leave_malloc_alone(env):
    result = probe("allocator.keep_freed_memory()", **env)
    assert result["kept"] is False
    assert result["faults"] > 300_000


def test_a_server_puts_large_blocks_back_on_mmap():
    """``create_app`` replaces the batch policy: a worker gives big uploads' memory back."""
    result = probe(
        "assert allocator.keep_freed_memory()\n"
        "from imageclf.web import create_app\n"
        "create_app()\n"
        "assert not allocator.keep_freed_memory()  # the server's policy stays"
    )
    assert result["kept"] is False
    assert result["faults"] > 300_000
