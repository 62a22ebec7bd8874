"""Bagel's Qwen2 tokenizer and special token ids, read from a local directory only.

Bagel (``data/data_utils.py:130-165``, ``add_special_tokens``) uses four chat/vision tokens as
its own special tokens: "bos" ``<|im_start|>``, "eos" ``<|im_end|>``, start_of_image
``<|vision_start|>``, end_of_image ``<|vision_end|>``. Those missing from the tokenizer's special
tokens are added (the Qwen2.5 tokenizer already has all four, so nothing is added and the vocab
stays 152064); the ids are then read from the tokenizer, never hard-coded.

transformers 5 changed two things that Bagel (written for transformers 4) relies on:
``special_tokens_map`` no longer lists the additional ("extra") special tokens, and
``add_tokens`` of a token that already is a special added token re-registers it as a plain one
and counts it. Taken literally, Bagel's code would then re-add the Qwen2.5 tokens as non-special
tokens and report 3 new tokens. ``load_tokenizer`` therefore also looks at
``all_special_tokens`` (named + extra special tokens, as ``special_tokens_map`` did in
transformers 4) and reports the number of rows the vocabulary grew by.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from unigrpo_jax.model.config import SpecialTokens
from unigrpo_jax.errors import ConfigError

BOS = '<|im_start|>'
EOS = '<|im_end|>'
START_OF_IMAGE = '<|vision_start|>'
END_OF_IMAGE = '<|vision_end|>'
BAGEL_TOKENS = (BOS, EOS, START_OF_IMAGE, END_OF_IMAGE)

# Files that make a directory hold a tokenizer (a fast ``tokenizer.json`` or the slow Qwen2
# ``vocab.json`` + ``merges.txt``, each with its ``tokenizer_config.json``).
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'merges.txt')


class TokenizerError(ValueError):
    """A tokenizer directory is missing or cannot be loaded, or a text has unknown words."""


def has_tokenizer(directory: str) -> bool:
    """Whether ``directory`` holds tokenizer files (``tokenizer.json`` or ``vocab.json``)."""
    return any(os.path.exists(os.path.join(directory, name))
               for name in ('tokenizer.json', 'vocab.json'))


def _special_tokens(tokenizer: Any) -> set[str]:
    """Every special token string: ``special_tokens_map`` values (str or list) + extras."""
    found = set()
    for value in tokenizer.special_tokens_map.values():
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(str(v) for v in value)
    found.update(str(t) for t in getattr(tokenizer, 'all_special_tokens', ()))
    return found


def load_tokenizer(directory: str) -> tuple[Any, SpecialTokens, int]:
    """Loads the tokenizer of ``directory`` and adds Bagel's special tokens.

    Returns:
      ``(tokenizer, tokens, num_new_tokens)``: the transformers tokenizer (with the missing
      Bagel tokens added), their ids, and how many rows the vocabulary grew by (0 for the
      Qwen2.5 tokenizer of the release; the embedding tables need that many more rows).
    Raises:
      TokenizerError if the directory or its tokenizer files are missing or unreadable.
    """
    from transformers import AutoTokenizer  # slow import, only where a tokenizer is needed

    if not os.path.isdir(directory):
        raise TokenizerError(f'tokenizer directory {directory} does not exist')
    if not has_tokenizer(directory):
        raise TokenizerError(
            f'{directory} has no tokenizer: expected tokenizer.json (fast) or vocab.json + '
            f'merges.txt (Qwen2), found {sorted(os.listdir(directory))}')
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for bad files
        raise TokenizerError(f'cannot load the tokenizer in {directory}: {e}') from e
    special = _special_tokens(tokenizer)
    new_tokens = [t for t in BAGEL_TOKENS if t not in special]
    before = len(tokenizer)
    if new_tokens:
        tokenizer.add_tokens(new_tokens)
    num_new_tokens = len(tokenizer) - before
    ids = dict(zip(BAGEL_TOKENS, tokenizer.convert_tokens_to_ids(list(BAGEL_TOKENS))))
    unknown = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise TokenizerError(f'tokenizer in {directory} maps {unknown} to no id / the unk token')
    tokens = SpecialTokens(bos=ids[BOS], eos=ids[EOS], start_of_image=ids[START_OF_IMAGE],
                           end_of_image=ids[END_OF_IMAGE])
    return tokenizer, tokens, num_new_tokens


def encode_segment(tokenizer: Any, tokens: SpecialTokens, text: str) -> list[int]:
    """Bagel's text segment: ``[bos] + encode(text) + [eos]`` (no other special tokens)."""
    return [tokens.bos, *tokenizer.encode(text, add_special_tokens=False), tokens.eos]


def _quoted(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut to its first ``limit`` characters."""
    return repr(text) if len(text) <= limit else f'{text[:limit]!r}... ({len(text)} characters)'


def encode_segments(tokenizer: Any, tokens: SpecialTokens, texts: Sequence[str], length: int,
                    what: str = 'prompt') -> tuple[np.ndarray, np.ndarray]:
    """Bagel's text segments of ``texts`` (``encode_segment``) as a static-shape batch.

    Returns ``(ids [B, length] int32, lengths [B] int32)``: each ``[bos] text [eos]``
    right-padded with ``tokens.eos`` (the padding is never attended: every consumer masks
    positions past ``lengths``). ``what`` names the segment (``prompt``, ``think``) in errors.

    Raises:
      ConfigError (a ValueError) naming the text and ``data.max_{what}_tokens`` when a segment
        is longer than ``length``.
      TokenizerError (a ValueError) when a text encodes to the tokenizer's unk id (it has
        words outside the vocabulary; tokenizers without an unk token never raise this).
    """
    unk = getattr(tokenizer, 'unk_token_id', None)
    ids = np.full((len(texts), length), tokens.eos, np.int32)
    lengths = np.zeros((len(texts),), np.int32)
    for i, text in enumerate(texts):
        segment = encode_segment(tokenizer, tokens, text)
        if unk is not None and unk in segment[1:-1]:
            raise TokenizerError(f'{what} {_quoted(text)} has words outside the tokenizer\'s '
                                 f'vocabulary (they encode to its unk token, id {unk})')
        if len(segment) > length:
            raise ConfigError(f'{what} {_quoted(text)} has {len(segment)} tokens with its bos and eos, '
                              f'more than its padded segment of {length}: raise '
                              f'config.data.max_{what}_tokens')
        ids[i, :len(segment)], lengths[i] = segment, len(segment)
    return ids, lengths
