"""Training-mode packed sequences: Bagel's per-sample attention mask from its segment layout.

A packed sample is a list of splits (segments) with a mode each (bagel.md §8,
``prepare_attention_mask_per_sample``, data_utils.py:72-103):

- ``causal``: text; causal inside the split;
- ``full``: a clean image block (ViT or VAE); bidirectional inside the split;
- ``noise``: a noised image block (has a loss); bidirectional inside, and no token outside the
  split may attend to it.

Every token sees all earlier splits (except ``noise`` ones). Samples never see each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MODES = ('causal', 'full', 'noise')


def sample_mask(split_lens: Sequence[int], modes: Sequence[str]) -> np.ndarray:
    """``[L, L]`` bool, L = sum(split_lens): query row may attend key column."""
    if len(split_lens) != len(modes):
        raise ValueError(f'{len(split_lens)} split lengths but {len(modes)} modes')
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f'unknown attention modes {bad}; expected {MODES}')
    total = int(sum(split_lens))
    mask = np.tril(np.ones((total, total), bool))
    start = 0
    for length, mode in zip(split_lens, modes):
        end = start + int(length)
        if mode in ('full', 'noise'):
            mask[start:end, start:end] = True
        if mode == 'noise':
            mask[:start, start:end] = False
            mask[end:, start:end] = False
        start = end
    return mask


def packed_mask(sample_lens: Sequence[int], split_lens: Sequence[int],
                modes: Sequence[str]) -> np.ndarray:
    """Block-diagonal ``[T, T]`` bool mask of several packed samples (splits in sample order)."""
    total = int(sum(sample_lens))
    mask = np.zeros((total, total), bool)
    start, split = 0, 0
    for length in sample_lens:
        lens, covered = [], 0
        while covered < length:
            if split >= len(split_lens):
                raise ValueError('split lengths do not cover the sample lengths')
            lens.append(int(split_lens[split]))
            covered += lens[-1]
            split += 1
        if covered != length:
            raise ValueError(f'splits {lens} do not add up to the sample length {length}')
        mask[start:start + length, start:start + length] = sample_mask(
            lens, modes[split - len(lens):split])
        start += length
    return mask
