"""Checkpoint-key -> param-path rules and the transforms between PyTorch and Flax layouts.

A table is a list of ``Rule``s. Each rule matches checkpoint keys with a regular expression
(full match) and names the Flax param it becomes; ``{name}`` in the path is filled from the
regex's named groups. A rule with ``stack='i'`` writes the tensor into slice ``[i]`` of a param
whose leading axis stacks the layers (``nn.scan``).

Transforms (``E`` = the Flax param's shape, per layer for stacked params):
- ``identity``: same shape.
- ``flat``: the checkpoint holds ``E`` flattened (a q/k/v bias ``[H*D]`` -> ``[H, D]``).
- ``linear``: a PyTorch ``Linear.weight [out, in]`` -> kernel ``[*in, *out]`` where the first
  ``in_dims`` axes of ``E`` are the input (``o_proj [out, H*D]`` -> ``[H, D, out]``: in_dims=2).
- ``conv``: ``Conv2d.weight [O, I, kh, kw]`` -> ``[kh, kw, I, O]``.
Every transform is exactly invertible, which the exporter uses.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

TRANSFORMS = ('identity', 'flat', 'linear', 'conv')


@dataclasses.dataclass(frozen=True)
class Rule:
    key: str
    path: str
    transform: str = 'identity'
    in_dims: int = 1
    stack: str | None = None

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f'rule {self.key!r}: unknown transform {self.transform!r}')

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.key)


def source_shape(rule: Rule, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The checkpoint shape a rule expects for a Flax param (per layer) of ``shape``."""
    if rule.transform == 'identity':
        return tuple(shape)
    if rule.transform == 'flat':
        return (math.prod(shape),)
    if rule.transform == 'linear':
        return (math.prod(shape[rule.in_dims:]), math.prod(shape[:rule.in_dims]))
    kh, kw, i, o = shape
    return (o, i, kh, kw)


def to_flax(rule: Rule, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Checkpoint tensor -> Flax layout ``shape`` (a view where possible, no dtype change)."""
    if rule.transform == 'linear':
        x = x.T
    elif rule.transform == 'conv':
        x = x.transpose(2, 3, 1, 0)
    return x.reshape(shape)


def to_torch(rule: Rule, x: np.ndarray) -> np.ndarray:
    """Flax param (per layer) -> checkpoint layout; the inverse of ``to_flax``."""
    shape = source_shape(rule, x.shape)
    if rule.transform == 'linear':
        return np.ascontiguousarray(x.reshape(shape[::-1]).T)
    if rule.transform == 'conv':
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(x.reshape(shape))


def match(rules: list[Rule], key: str) -> tuple[Rule, dict[str, str]] | None:
    """The unique rule matching ``key`` and its groups, or None."""
    found = [(r, m.groupdict()) for r in rules if (m := r.regex.fullmatch(key))]
    if len(found) > 1:
        raise ValueError(f'checkpoint key {key!r} matches several rules: '
                         f'{[r.key for r, _ in found]}')
    return found[0] if found else None
