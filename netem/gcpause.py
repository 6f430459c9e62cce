"""Pausing the cyclic garbage collector while building large object graphs.

Loading a 30,000-service cluster allocates millions of small objects and no
cycles worth collecting; CPython's generational collector would otherwise
run hundreds of full passes over the growing heap (more than half of the
build time, measured). Builders wrap themselves in `paused_gc()`; nesting is
fine and the collector is re-enabled only by the outermost one, after
`gc.freeze()` has moved what was built into the permanent generation, so the
first collection afterwards does not walk the whole new heap either. Frozen
objects are still freed by reference counting when dropped; the model holds
no reference cycles.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc(freeze: bool = True) -> Iterator[None]:
    """`freeze=False` for work that may leave cycles to collect later (a
    simulation run: a user-space proxy's two legs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if freeze:
                gc.freeze()
            gc.enable()
