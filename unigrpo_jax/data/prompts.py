"""Prompt datasets as tensorflow-datasets builders over local files, and a resumable stream.

Sources (``config.data.train`` / ``config.data.eval``):

- a named source: ``geneval`` (GenEval's 553 prompts with metadata, ``data/geneval/``, shipped
  in the repo) or one a package registers (``@register_source``), found the way rewards are:
  the module ``unigrpo_jax.<package>.prompt_source`` of every package is imported on the first
  look-up (``unigrpo_jax.shapes.prompt_source`` registers ``shapes_train`` and ``shapes_eval``);
- a path to a JSONL file: one GenEval-format object per line (``prompt`` and metadata).

Builders work offline (nothing is downloaded) and are prepared once under ``data_dir`` (in a
multi-process run process 0 prepares first, then the others, which find it prepared on a
shared file system). Every process reads all the prompts; the order is a deterministic function
of the seed and the step, so a resumed run sees exactly the prompts it would have seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow_datasets as tfds

from unigrpo_jax import config_files, discovery
from unigrpo_jax.parallel import distributed

GENEVAL_FILE = os.path.join(config_files.ROOT, 'data', 'geneval', 'evaluation_metadata.jsonl')
SOURCE_MODULE = 'prompt_source'  # unigrpo_jax.<package>.prompt_source registers its sources

_sources: dict[str, Callable[[], list[dict]]] = {}
_discovered = False


class DataError(ValueError):
    """A prompt source is missing or malformed."""


def read_jsonl_lines(path: str) -> list[tuple[int, dict]]:
    """``[(0-based line, metadata)]`` of a GenEval-format JSONL file, blank lines skipped
    (and counted); every other line needs a string ``prompt``."""
    if not os.path.exists(path):
        raise DataError(f'prompt file {path} does not exist')
    out = []
    with open(path, 'rb') as f:
        for i, raw in enumerate(f):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as e:
                raise DataError(f'{path}:{i + 1} is not UTF-8 text ({e.reason} at byte '
                                f'{e.start})') from e
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f'{path}:{i + 1} is not valid JSON: {e}') from e
            if not isinstance(item, dict) or not isinstance(item.get('prompt'), str):
                raise DataError(f'{path}:{i + 1} has no string field "prompt"')
            out.append((i, item))
    if not out:
        raise DataError(f'prompt file {path} has no prompts')
    return out


def where(source: str, index: int) -> str:
    """Where prompt ``index`` (its ``load_prompts`` index) of ``source`` is written:
    ``file:line`` of a JSONL path, else the named source and the index."""
    if is_named(source):
        return f'{source} prompt {index}'
    return f'{source}:{read_jsonl_lines(source)[index][0] + 1}'


def read_jsonl(path: str) -> list[dict]:
    """The prompts of ``read_jsonl_lines``, in file order."""
    return [item for _, item in read_jsonl_lines(path)]


def register_source(name: str) -> Callable[[Callable[[], list[dict]]], Callable[[], list[dict]]]:
    """Decorator registering ``examples() -> [GenEval-format dict]`` as the named prompt source
    ``name`` (a deterministic list: every process and every resume reads the same)."""
    if not name or name.endswith('.jsonl'):
        raise ValueError(f'a prompt source name must be non-empty and not a .jsonl path: {name!r}')

    def add(examples: Callable[[], list[dict]]) -> Callable[[], list[dict]]:
        known = _sources.get(name)
        if known is not None and (discovery.qualified_name(known)
                                  != discovery.qualified_name(examples)):
            raise ValueError(f'prompt source {name!r} is already registered by '
                             f'{discovery.qualified_name(known)}')
        _sources[name] = examples
        return examples

    return add


@register_source('geneval')
def _geneval() -> list[dict]:
    return read_jsonl(GENEVAL_FILE)


def source_names() -> list[str]:
    """The named prompt sources, sorted (``unigrpo_jax.<package>.prompt_source`` modules are
    imported on the first call)."""
    global _discovered
    if not _discovered:
        discovery.import_all(discovery.modules_named(SOURCE_MODULE))
        _discovered = True
    return sorted(_sources)


def is_named(source: str) -> bool:
    """Whether ``source`` is a named (registered) source rather than a file path."""
    return source in source_names()


def source_examples(source: str) -> list[dict]:
    """The prompts of a named source or a JSONL path, in file order."""
    if is_named(source):
        return _sources[source]()
    if source.endswith('.jsonl'):
        return read_jsonl(source)
    raise DataError(f'unknown prompt source {source!r}; expected one of {source_names()} or a '
                    '.jsonl path')


@dataclasses.dataclass(eq=False)
class PromptsConfig(tfds.core.BuilderConfig):
    """One prompt source (a named source or a JSONL path) per builder config."""

    source: str = ''


class Prompts(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GenEval-format prompts read from local files (nothing is downloaded)."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=f'prompts from {self.builder_config.source}',
            features=tfds.features.FeaturesDict({
                'index': np.int64, 'prompt': tfds.features.Text(),
                'metadata': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {'train': self._generate_examples()}

    def _generate_examples(self):
        for i, item in enumerate(source_examples(self.builder_config.source)):
            yield i, {'index': i, 'prompt': item['prompt'], 'metadata': json.dumps(item)}


def builder_name(source: str) -> str:
    """The builder config's name of ``source``: a hash of the named source, or of a JSONL
    file's content (an edited file is prepared again; copies of one file on several hosts,
    whatever their paths and modification times, are one builder)."""
    if is_named(source):
        stamp = source.encode()
    else:
        with open(source, 'rb') as f:
            stamp = f.read()
    return 'p' + hashlib.sha1(stamp).hexdigest()[:12]


def _builder(source: str, data_dir: str) -> Prompts:
    """The prepared builder of ``source`` (``builder_name``). In a multi-process run process 0
    prepares it while the others check their own copy of the file; a failure anywhere, or
    copies that differ, stops every process with the failed processes' messages."""
    key = source if is_named(source) else os.path.abspath(source)
    name, error = '', None
    try:
        if not is_named(source):
            source_examples(source)  # a clear error for a missing or malformed file
        name = builder_name(key)
        if jax.process_index() == 0:
            Prompts(data_dir=data_dir,
                    config=PromptsConfig(name=name, source=key)).download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  (re-raised on every process)
        error = e
    distributed.raise_if_failed_anywhere(error, f'preparing the prompts {source}', DataError)
    names = distributed.gather_text(name)
    if len(set(names)) > 1:
        raise DataError(f'the processes read different prompts from {source}: content hashes '
                        f'{names} (process order); give every host the same file')
    builder = Prompts(data_dir=data_dir, config=PromptsConfig(name=name, source=key))
    builder.download_and_prepare()  # a no-op where it is prepared
    return builder


def load_prompts(source: str, data_dir: str) -> list[dict]:
    """All the examples of ``source``, via its builder (every process of a run reads them all:
    prompts are small, and a batch is cut from the same seeded order everywhere).

    Each example is the GenEval metadata dict plus ``index`` (its line in the source).
    """
    builder = _builder(source, data_dir)
    out = []
    for ex in tfds.as_numpy(builder.as_dataset(split='train', shuffle_files=False)):
        item = json.loads(ex['metadata'].decode())
        item['index'] = int(ex['index'])
        out.append(item)
    out.sort(key=lambda e: e['index'])
    return out


def weight_by_tag(examples: list[dict], tag_weights: dict) -> list[dict]:
    """The examples in their order, each tag's share scaled by its weight (``{}``: all of them).

    A tag of weight ``w`` keeps its first ``round(n * w / max_weight)`` of ``n`` examples (at
    least one where ``w > 0``), so a tag's share of the result is its share of the source times
    its weight, renormalised; weight 0 drops it. Every example needs a ``tag`` that the weights
    name, and every named tag must occur (a misspelt tag is an error, not a silent 0).
    """
    if not tag_weights:
        return examples
    weights = {str(tag): float(w) for tag, w in tag_weights.items()}
    if any(not np.isfinite(w) or w < 0 for w in weights.values()) or max(weights.values()) <= 0:
        raise DataError(f'data.tag_weights={weights} must be finite, >= 0 and not all 0')
    counts: dict[str, int] = {}
    for item in examples:
        counts[item.get('tag')] = counts.get(item.get('tag'), 0) + 1
    if set(counts) != set(weights):
        raise DataError(f'data.tag_weights names the tags {sorted(weights)}, the prompts have '
                        f'{sorted(counts, key=str)}: give every tag of the prompts a weight, '
                        'and no other')
    top = max(weights.values())
    keep = {tag: 0 if w == 0 else max(1, round(counts[tag] * w / top))
            for tag, w in weights.items()}
    out = []
    for item in examples:
        if keep[item['tag']] > 0:
            keep[item['tag']] -= 1
            out.append(item)
    return out


class PromptStream:
    """Batches of prompts in a seeded order: ``batch(step)`` depends only on (seed, step).

    Every epoch is a fresh permutation of the examples, so resuming at step k continues the
    exact order of an uninterrupted run.
    """

    def __init__(self, examples: list[dict], batch_size: int, seed: int):
        if batch_size > len(examples):
            raise DataError(f'batch_size={batch_size} exceeds the {len(examples)} prompts')
        self.examples, self.batch_size, self.seed = examples, batch_size, seed

    def batch(self, step: int) -> list[dict]:
        n, b = len(self.examples), self.batch_size
        per_epoch = n // b
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return [self.examples[i] for i in order[k * b:(k + 1) * b]]

    def __iter__(self) -> Iterator[list[dict]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
