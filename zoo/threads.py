"""torch's intra-op thread count for one block of work, restored afterwards.

Small models (digits MLPs, the generators' denoisers) run small matmuls; with more torch threads than
free cores the OpenMP workers spin while another process holds a CPU. Measured on 2 cores: 200
generator training steps took 5-8 s on 1 thread and 110-175 s on 2 at load 12, while a 250-model
builder run took 8.2 s on 1 thread and 6.7 s on 2 on an idle machine. So long-running commands take
``threads=`` (``--threads``) and leave torch's default when it is not given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from zoo.errors import ConfigError

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch intra-op threads (``None``: torch's current setting)."""
    import torch

    if threads is None or threads == torch.get_num_threads():
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
