"""Parameter layouts: how a task network's parameters map to one flat vector and back.

A checkpoint of a task network is stored and modelled as one flat float vector (thesis Sec. 3.2.1).
``ParamLayout`` records the ordered ``(name, shape)`` list that fixes that flattening, converts
between flat vectors ``[N, P]`` and dicts of batched tensors ``{name: [N, *shape]}``, and checks
that a checkpoint fits the task it claims to belong to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamLayout:
    """Ordered parameter names and shapes of one task network."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> ParamLayout:
        return cls(tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))

    @classmethod
    def from_list(cls, entries: Sequence[Sequence]) -> ParamLayout:
        """From ``[[name, [shape...]], ...]`` (the JSON form written to the manifest)."""
        return cls(tuple((str(n), tuple(int(s) for s in shape)) for n, shape in entries))

    def to_list(self) -> list[list]:
        return [[n, list(s)] for n, s in self.entries]

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.entries]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for _, s in self.entries]

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def offsets(self) -> dict[str, slice]:
        out, start = {}, 0
        for (name, _), size in zip(self.entries, self.sizes, strict=True):
            out[name] = slice(start, start + size)
            start += size
        return out

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[N, P]`` -> ``{name: [N, *shape]}`` (views into ``flat``)."""
        self.check_flat(flat)
        parts = torch.split(flat, self.sizes, dim=-1)
        return {
            name: part.reshape(*flat.shape[:-1], *shape)
            for (name, shape), part in zip(self.entries, parts, strict=True)
        }

    def flatten(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: [N, *shape]}`` -> ``[N, P]``; names and shapes must match the layout."""
        missing = [n for n in self.names if n not in params]
        extra = [n for n in params if n not in self.names]
        if missing or extra:
            raise ValueError(
                f"parameters do not match the task layout: missing {missing}, unexpected {extra}. "
                f"Expected {self.describe()}"
            )
        chunks = []
        for name, shape in self.entries:
            p = params[name]
            if tuple(p.shape[-len(shape) :]) != shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(p.shape)} but the task needs "
                    f"[..., {', '.join(map(str, shape))}]. Expected {self.describe()}"
                )
            chunks.append(p.reshape(*p.shape[: p.ndim - len(shape)], -1))
        return torch.cat(chunks, dim=-1)

    def check_flat(self, flat: torch.Tensor) -> None:
        if flat.shape[-1] != self.num_params:
            raise ValueError(
                f"a parameter vector of length {flat.shape[-1]} does not fit this task, whose "
                f"network has {self.num_params} parameters ({self.describe()}); use a checkpoint "
                "of the same task network (task=...)"
            )

    def describe(self) -> str:
        return ", ".join(f"{n}{list(s)}" for n, s in self.entries)
