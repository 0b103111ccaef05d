"""Progress reporting of the sampling loops (DDPM, DDIM, flow ODEs)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

Progress = bool | Callable[[], object]


def with_progress(items: Iterable[T], progress: Progress, desc: str) -> Iterator[T]:
    """Iterate ``items``: ``progress=True`` shows a tqdm bar of its own, a callable is called after
    every item (the ``update`` of a caller's bar spanning several sampling loops), ``False`` is
    silent."""
    if progress is True:
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc)
        return
    for item in items:
        yield item
        if callable(progress):
            progress()
