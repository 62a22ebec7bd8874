"""Applying a rule table: checkpoint tensors -> a Flax param tree, and back.

``convert`` validates the whole checkpoint against the model's abstract params before it reads a
single tensor (missing keys, unexpected keys, wrong shapes, layer indexes out of range: all
reported together), then reads each tensor lazily and writes it into a preallocated array, so the
peak host memory is about one converted copy. Source dtypes are kept (bf16 stays bf16) unless a
dtype is asked for.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from unigrpo_jax.loading import rules as rules_lib
from unigrpo_jax.loading.rules import Rule


class CheckpointError(ValueError):
    """A checkpoint does not match the model: nothing was converted."""


_DTYPES = {'BF16': ml_dtypes.bfloat16, 'F16': np.float16, 'F32': np.float32, 'F64': np.float64,
           'I8': np.int8, 'I16': np.int16, 'I32': np.int32, 'I64': np.int64, 'U8': np.uint8,
           'BOOL': np.bool_}


def _read_header(path: str) -> tuple[int, dict]:
    """``(data start offset, {key: {dtype, shape, data_offsets}})`` of a safetensors file."""
    try:
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            (length,) = struct.unpack('<Q', f.read(8))
            if length > size - 8:
                raise ValueError(f'header length {length} exceeds the file size {size}')
            header = json.loads(f.read(length))
    except FileNotFoundError as e:
        raise CheckpointError(f'missing checkpoint file {path}') from e
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f'cannot read {path} as safetensors: {e}') from e
    header.pop('__metadata__', None)
    for key, info in header.items():
        begin, end = info['data_offsets']
        dtype = _DTYPES.get(info['dtype'])
        if dtype is None or 8 + length + end > size or (
                end - begin != math.prod(info['shape']) * np.dtype(dtype).itemsize):
            raise CheckpointError(f'cannot read {path} as safetensors: tensor {key!r} '
                                  f'({info["dtype"]}, {info["shape"]}) is malformed or truncated')
    return 8 + length, header


class SafetensorsSource:
    """Lazy reader over one or more ``.safetensors`` files.

    Each tensor is read with plain file reads into a fresh array (no memory map), so a
    conversion holds only the converted copy, not the pages of the source file as well.
    """

    def __init__(self, paths: Iterable[str]):
        self._headers: dict[str, tuple[int, dict]] = {}
        self._where: dict[str, str] = {}
        for path in paths:
            self._headers[path] = _read_header(path)
            for key in self._headers[path][1]:
                if key in self._where:
                    raise CheckpointError(f'key {key!r} is in both {self._where[key]} and {path}')
                self._where[key] = path

    def keys(self) -> list[str]:
        return sorted(self._where)

    def _info(self, key: str) -> tuple[str, int, dict]:
        path = self._where[key]
        start, header = self._headers[path]
        return path, start, header[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._info(key)[2]['shape'])

    def read(self, key: str) -> np.ndarray:
        path, start, info = self._info(key)
        out = np.empty(info['shape'], _DTYPES[info['dtype']])
        with open(path, 'rb') as f:
            f.seek(start + info['data_offsets'][0])
            if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != out.nbytes:
                raise CheckpointError(f'{path} ended early while reading {key!r}')
        return out


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested dict -> ``{'a/b/c': leaf}``."""
    out = {}
    for k, v in tree.items():
        path = f'{prefix}{k}'
        if isinstance(v, Mapping):
            out.update(flatten(v, path + '/'))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b/c': leaf}`` -> nested dict."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        *parents, name = path.split('/')
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return tree


def _fill_key(rule: Rule, groups: Mapping[str, str]) -> str | None:
    """The checkpoint key of ``rule`` for these group values, or None if they do not fit it."""
    try:
        key = re.sub(r'\(\?P<(\w+)>[^()]*\)', lambda m: groups[m.group(1)], rule.key)
    except KeyError:
        return None
    key = key.replace('\\', '')
    return key if rule.regex.fullmatch(key) else None


def _path_regex(rule: Rule) -> re.Pattern[str]:
    parts = re.split(r'\{(\w+)\}', rule.path)
    pattern = ''.join(re.escape(p) if i % 2 == 0 else f'(?P<{p}>[^/]+)'
                      for i, p in enumerate(parts))
    return re.compile(pattern)


def key_for(rules: list[Rule], path: str, index: int | None = None) -> tuple[Rule, str]:
    """The rule and checkpoint key that produce param ``path`` (layer ``index`` if stacked)."""
    found = []
    for rule in rules:
        m = _path_regex(rule).fullmatch(path)
        if not m or (rule.stack is None) != (index is None):
            continue
        groups = dict(m.groupdict())
        if rule.stack is not None:
            groups[rule.stack] = str(index)
        key = _fill_key(rule, groups)
        if key is not None:
            found.append((rule, key))
    if len(found) != 1:
        raise ValueError(f'param {path!r} is produced by {len(found)} rules '
                         f'{[k for _, k in found]}; the table must give exactly one')
    return found[0]


def convert(rules: list[Rule], source: SafetensorsSource, abstract: Mapping[str, Any], *,
            keys: Iterable[str] | None = None, dtype: Any = None,
            describe: Callable[[str], str] = lambda path: '') -> dict[str, Any]:
    """Builds the param tree ``abstract`` (nested dict of arrays/ShapeDtypeStructs) from ``source``.

    Args:
      rules: the table.
      keys: the checkpoint keys to convert (default: all of ``source``); every one must match a
        rule and every param must be produced exactly once.
      dtype: cast to this dtype (default: keep the checkpoint's dtype).
      describe: param path -> the config fields behind its shape, for error messages.
    Raises:
      CheckpointError listing every problem, before any tensor is read.
    """
    expected = {p: tuple(a.shape) for p, a in flatten(abstract).items()}
    keys = source.keys() if keys is None else list(keys)
    errors, plan, filled = [], [], {}
    for key in keys:
        hit = rules_lib.match(rules, key)
        if hit is None:
            errors.append(f'unexpected key {key!r}: no rule maps it to a param')
            continue
        rule, groups = hit
        path = rule.path.format(**groups)
        if path not in expected:
            errors.append(f'unexpected key {key!r}: the model has no param {path!r} '
                          f'{describe(path)}'.rstrip())
            continue
        shape = expected[path]
        index = None
        if rule.stack is not None:
            index, shape = int(groups[rule.stack]), shape[1:]
            if index >= expected[path][0]:
                errors.append(f'unexpected key {key!r}: layer {index} >= {expected[path][0]} '
                              f'layers {describe(path)}'.rstrip())
                continue
        want = rules_lib.source_shape(rule, shape)
        found = source.shape(key)
        if found != want:
            errors.append(f'checkpoint key {key!r} has shape {found}, expected {want} '
                          f'{describe(path)}'.rstrip())
            continue
        filled.setdefault(path, set()).add(index)
        plan.append((key, rule, path, index))
    for path, shape in expected.items():
        indexes = filled.get(path, set())
        stacked = any(r.stack for r in rules if _path_regex(r).fullmatch(path))
        wanted = set(range(shape[0])) if stacked else {None}
        for index in sorted(wanted - indexes, key=lambda i: -1 if i is None else i):
            _, key = key_for(rules, path, index)
            errors.append(f'missing key {key!r} (for param {path!r})')
    if errors:
        head = '\n  '.join(errors[:40])
        more = f'\n  ... and {len(errors) - 40} more' if len(errors) > 40 else ''
        raise CheckpointError(f'checkpoint does not match the model ({len(errors)} problems):'
                              f'\n  {head}{more}')
    out: dict[str, np.ndarray] = {}
    for key, rule, path, index in plan:
        tensor = source.read(key)
        if dtype is not None:
            tensor = tensor.astype(dtype)
        if path not in out:
            out[path] = np.empty(expected[path], tensor.dtype)
        target = out[path] if index is None else out[path][index]
        target[...] = rules_lib.to_flax(rule, tensor, target.shape)
    return unflatten(out)


def export(rules: list[Rule], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of ``convert``: a param tree -> ``{checkpoint key: tensor}`` (same dtypes)."""
    out = {}
    for path, value in flatten(params).items():
        value = np.asarray(value)
        stacked = any(r.stack for r in rules if _path_regex(r).fullmatch(path))
        for index in (range(value.shape[0]) if stacked else (None,)):
            rule, key = key_for(rules, path, index)
            out[key] = rules_lib.to_torch(rule, value if index is None else value[index])
    return out
