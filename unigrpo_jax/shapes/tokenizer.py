"""ShapesEval's word-level tokenizer, keeping Bagel's special tokens.

A ``tokenizers`` WordLevel model on whitespace-split words (``WhitespaceSplit``, so ``<think>``
and ``;`` stay whole words), wrapped as a ``transformers.PreTrainedTokenizerFast`` so that
``unigrpo_jax.loading.tokenizer.load_tokenizer`` reads it like Bagel's Qwen2 tokenizer. Ids:

- 0 ``<pad>``, 1 ``<unk>``, then Bagel's ``<|im_start|>`` (bos), ``<|im_end|>`` (eos),
  ``<|vision_start|>``, ``<|vision_end|>`` as special tokens (2..5);
- then every word of the prompt templates (``prompts.all_prompts``) and of the plan grammar
  (``<think>``, ``</think>``, ``;``, ``at``, colours, shapes, cell words ``r0c0`` .. ``r3c3``),
  sorted, so the vocabulary is a pure function of the world (deterministic).

The shipped copy lives in ``data/shapes_eval/tokenizer/``; rebuild it with
``python -m unigrpo_jax.shapes.tokenizer data/shapes_eval/tokenizer``.
"""

from __future__ import annotations

import os
import sys

from unigrpo_jax.loading import tokenizer as bagel_tokenizer
from unigrpo_jax.shapes import plan, prompts, world

PAD = '<pad>'
UNK = '<unk>'
SPECIAL_TOKENS = (PAD, UNK, *bagel_tokenizer.BAGEL_TOKENS)
DEFAULT_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'data', 'shapes_eval',
                           'tokenizer')


def words() -> list[str]:
    """Every non-special word the prompts and plans use, sorted."""
    found = set()
    for tag in prompts.TAGS:
        for metadata in prompts.all_prompts(tag):
            found.update(metadata['prompt'].split())
    found.update((plan.THINK_OPEN, plan.THINK_CLOSE, plan.SEPARATOR, 'at'))
    found.update(world.COLORS)
    found.update(world.SHAPES)
    found.update(plan.cell_word(r, c) for r in range(world.GRID) for c in range(world.GRID))
    return sorted(found)


def vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens first (``SPECIAL_TOKENS`` order), then ``words()``."""
    return {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words()))}


def build():
    """The tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
    from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

    model = Tokenizer(models.WordLevel(vocabulary(), unk_token=UNK))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece's decoder with an unused prefix joins the words with single spaces.
    model.decoder = decoders.WordPiece(prefix='##', cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token=UNK, pad_token=PAD,
        extra_special_tokens=list(bagel_tokenizer.BAGEL_TOKENS), model_max_length=256,
        clean_up_tokenization_spaces=False)


def save(directory: str) -> None:
    """Writes the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) to
    ``directory``."""
    os.makedirs(directory, exist_ok=True)
    build().save_pretrained(directory)


def load(directory: str = DEFAULT_DIR):
    """``(tokenizer, SpecialTokens)`` of a saved ShapesEval tokenizer.

    Raises:
      TokenizerError if the directory does not hold exactly the vocabulary ``vocabulary()``
      gives (a stale copy: rebuild it with this module's ``__main__``).
    """
    tokenizer, tokens, num_new = bagel_tokenizer.load_tokenizer(directory)
    expected = vocabulary()
    if num_new or tokenizer.get_vocab() != expected:
        raise bagel_tokenizer.TokenizerError(
            f'the tokenizer in {directory} has {len(tokenizer)} tokens ({num_new} Bagel tokens '
            f'added on load), expected the {len(expected)} of shapes.tokenizer.vocabulary(); '
            f'rebuild it: python -m unigrpo_jax.shapes.tokenizer {directory}')
    return tokenizer, tokens


if __name__ == '__main__':
    save(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR)
