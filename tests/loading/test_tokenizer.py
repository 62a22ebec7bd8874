"""Bagel's special tokens on tiny Qwen2-like tokenizers built offline."""

import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from unigrpo_jax.loading import tokenizer as tok
from unigrpo_jax.model.config import SpecialTokens
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.shapes import tokenizer as shapes_tokenizer

_QWEN_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>',
                  '<|vision_end|>']
_TEXT = ['a cat sat on the mat', 'the dog ate the cat food', 'hello world, think first']


def _byte_bpe(specials):
    """A byte-level BPE like Qwen2's, with ``specials`` registered as special added tokens."""
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    model.train_from_iterator(_TEXT, trainer)
    return model


def _save(directory, specials, extra, **named):
    os.makedirs(directory)
    fast = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(specials),
                                   extra_special_tokens=extra, **named)
    fast.save_pretrained(directory)
    return len(fast)


def test_qwen_like_tokenizer_adds_nothing(tmp_path):
    directory = str(tmp_path / 'qwen')
    size = _save(directory, _QWEN_SPECIALS, _QWEN_SPECIALS[1:], eos_token='<|im_end|>',
                 pad_token='<|endoftext|>')
    tokenizer, tokens, num_new = tok.load_tokenizer(directory)
    assert num_new == 0 and len(tokenizer) == size
    # BpeTrainer gives special tokens the first ids, in order.
    assert tokens == SpecialTokens(bos=1, eos=2, start_of_image=3, end_of_image=4)
    # Still special: decoding skips them (a plain re-add would make them ordinary tokens).
    ids = tok.encode_segment(tokenizer, tokens, 'a cat')
    assert tokenizer.decode(ids, skip_special_tokens=True) == 'a cat'


def test_transformers4_config_with_additional_special_tokens(tmp_path):
    """A release-style tokenizer_config.json (``additional_special_tokens``) adds nothing."""
    directory = str(tmp_path / 'qwen4')
    _save(directory, _QWEN_SPECIALS, _QWEN_SPECIALS[1:], eos_token='<|im_end|>')
    path = os.path.join(directory, 'tokenizer_config.json')
    with open(path) as f:
        config = json.load(f)
    config['additional_special_tokens'] = config.pop('extra_special_tokens')
    with open(path, 'w') as f:
        json.dump(config, f)
    _, tokens, num_new = tok.load_tokenizer(directory)
    assert num_new == 0
    assert tokens == SpecialTokens(bos=1, eos=2, start_of_image=3, end_of_image=4)


def test_missing_tokens_are_appended_in_bagel_order(tmp_path):
    directory = str(tmp_path / 'plain')
    size = _save(directory, ['<|endoftext|>', '<|im_end|>'], [], eos_token='<|im_end|>')
    tokenizer, tokens, num_new = tok.load_tokenizer(directory)
    assert num_new == 3 and len(tokenizer) == size + 3
    assert tokens == SpecialTokens(bos=size, eos=1, start_of_image=size + 1,
                                   end_of_image=size + 2)
    # The added tokens are atomic when encoding.
    assert tokenizer.encode('<|vision_start|>', add_special_tokens=False) == [size + 1]
    # save_pretrained keeps them (the converter writes the tokenizer this way).
    out = str(tmp_path / 'saved')
    tokenizer.save_pretrained(out)
    again, tokens_again, num_again = tok.load_tokenizer(out)
    assert (tokens_again, num_again, len(again)) == (tokens, 0, size + 3)


def test_encode_segment(tmp_path):
    directory = str(tmp_path / 'qwen')
    _save(directory, _QWEN_SPECIALS, _QWEN_SPECIALS[1:], eos_token='<|im_end|>')
    tokenizer, tokens, _ = tok.load_tokenizer(directory)
    body = tokenizer.encode('the cat ate', add_special_tokens=False)
    assert len(body) > 1
    assert tok.encode_segment(tokenizer, tokens, 'the cat ate') == [1, *body, 2]
    assert tok.encode_segment(tokenizer, tokens, '') == [1, 2]


def test_encode_segments_pads_with_eos_to_a_static_shape(tmp_path):
    directory = str(tmp_path / 'qwen')
    _save(directory, _QWEN_SPECIALS, _QWEN_SPECIALS[1:], eos_token='<|im_end|>')
    tokenizer, tokens, _ = tok.load_tokenizer(directory)
    texts = ['the cat ate', '', 'a dog']
    ids, lengths = tok.encode_segments(tokenizer, tokens, texts, 12)
    assert ids.shape == (3, 12) and ids.dtype == np.int32 and lengths.dtype == np.int32
    for row, length, text in zip(ids, lengths, texts):
        segment = tok.encode_segment(tokenizer, tokens, text)
        assert length == len(segment) and list(row[:length]) == segment
        assert (row[length:] == tokens.eos).all()
    assert lengths[1] == 2  # '' is [bos, eos]
    empty_ids, empty_lengths = tok.encode_segments(tokenizer, tokens, [], 4)
    assert empty_ids.shape == (0, 4) and empty_lengths.shape == (0,)


def test_encode_segments_names_the_text_and_the_config_field_when_it_does_not_fit(tmp_path):
    directory = str(tmp_path / 'qwen')
    _save(directory, _QWEN_SPECIALS, _QWEN_SPECIALS[1:], eos_token='<|im_end|>')
    tokenizer, tokens, _ = tok.load_tokenizer(directory)
    n = len(tok.encode_segment(tokenizer, tokens, 'the dog ate the cat food'))
    tok.encode_segments(tokenizer, tokens, ['the dog ate the cat food'], n)  # fits exactly
    with pytest.raises(ConfigError, match=rf"prompt 'the dog ate the cat food' has {n} tokens"
                                          r".*config\.data\.max_prompt_tokens"):
        tok.encode_segments(tokenizer, tokens, ['a cat', 'the dog ate the cat food'], n - 1)
    with pytest.raises(ValueError, match=r"think 'a cat'.*data\.max_think_tokens"):
        tok.encode_segments(tokenizer, tokens, ['a cat'], 2, what='think')


def test_encode_segments_refuses_words_outside_the_vocabulary():
    tokenizer, tokens = shapes_tokenizer.load()  # a word-level vocabulary with an unk token
    ids, _ = tok.encode_segments(tokenizer, tokens, ['a photo of a red square'], 16)
    assert tokenizer.unk_token_id not in ids
    with pytest.raises(tok.TokenizerError, match=r"prompt 'a photo of a purple dog' has words "
                                                 r"outside the tokenizer's vocabulary"):
        tok.encode_segments(tokenizer, tokens, ['a photo of a purple dog'], 16)


def test_missing_directory_or_files(tmp_path):
    with pytest.raises(tok.TokenizerError, match='does not exist'):
        tok.load_tokenizer(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(tok.TokenizerError, match='has no tokenizer'):
        tok.load_tokenizer(str(tmp_path / 'empty'))
    assert not tok.has_tokenizer(str(tmp_path / 'empty'))
