"""Converted Bagel params <-> an Orbax checkpoint directory.

Layout of a directory written by ``save_params``::

    llm_config.json, vit_config.json, config.json, ae_config.json   (``load_config`` reads them)
    checkpoint/     Orbax PyTree checkpoint of {'bagel': params, 'ae': ae_params}
                    (zarr arrays in <= 64 MB chunks, uncompressed, no OCDBT: see below)

Leaves keep their dtype (bf16 stays bf16). Numpy leaves are written without the defensive copy
Orbax makes by default, so saving the 7B model needs no second host copy of it; jax.Array leaves
are written by Orbax's array handler. ``load_params`` validates the stored tree against the
config's abstract params (every missing, unexpected or mis-shaped param reported at once) before
reading any array, and restores to host numpy arrays or, given shardings, to jax.Arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from unigrpo_jax.loading.bagel import config_files
from unigrpo_jax.loading.checkpoint import CheckpointError, flatten, unflatten
from unigrpo_jax.model import autoencoder, bagel
from unigrpo_jax.model.config import BagelConfig, load_config

CHECKPOINT_DIR = 'checkpoint'
_TREE_KEYS = ('bagel', 'ae')
# Storage choices that keep the host memory of saving / restoring near one copy of the params
# (measured with launch/bench_convert.py on 7B shapes; peak / params 1.1-1.2 for both):
# - zarr arrays in chunks of at most _CHUNK_BYTES: TensorStore stages one chunk at a time (a
#   layer-stacked 7B MLP kernel is one 3.8 GB array; as one chunk restoring it takes twice that);
# - no OCDBT: its writer holds the chunk copies in memory until the save commits (+0.6x);
# - no zstd: the same with the compressed chunks (+0.8x), for ~20% less disk on bf16 weights;
# - a bound on the bytes in flight.
_CHUNK_BYTES = 64 << 20
_USE_OCDBT = False
_USE_COMPRESSION = False
_CONCURRENT_GB = 2


def write_config_files(config: BagelConfig, directory: str) -> None:
    """Writes the json config files of ``config`` (``convert.bagel.config_files``)."""
    for name, content in config_files(config).items():
        with open(os.path.join(directory, name), 'w') as f:
            json.dump(content, f, indent=1)


def _registry():
    """Orbax's default handlers, except numpy arrays are not deep-copied before writing."""
    return ocp.type_handlers.create_type_handler_registry(
        (int, ocp.type_handlers.ScalarHandler()),
        (float, ocp.type_handlers.ScalarHandler()),
        (np.number, ocp.type_handlers.ScalarHandler()),
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.ArrayHandler()),
    )


def _checkpointer() -> ocp.Checkpointer:
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=_registry(),
                                          save_concurrent_gb=_CONCURRENT_GB,
                                          restore_concurrent_gb=_CONCURRENT_GB,
                                          use_ocdbt=_USE_OCDBT,
                                          use_compression=_USE_COMPRESSION)
    return ocp.Checkpointer(handler)


def _expected(config: BagelConfig) -> dict[str, tuple[int, ...]]:
    """``'bagel/...'`` / ``'ae/...'`` param path -> shape, for ``config``."""
    trees = dict(bagel=nn.unbox(bagel.abstract_params(config)),
                 ae=autoencoder.abstract_params(config.ae))
    return {path: tuple(leaf.shape) for path, leaf in flatten(trees).items()}


def _check_tree(found: Mapping[str, tuple[int, ...]], config: BagelConfig, where: str) -> None:
    expected = _expected(config)
    errors = [f'missing param {p!r} {expected[p]}' for p in sorted(set(expected) - set(found))]
    errors += [f'unexpected param {p!r} {found[p]}' for p in sorted(set(found) - set(expected))]
    errors += [f'param {p!r} has shape {found[p]}, expected {expected[p]}'
               for p in sorted(set(found) & set(expected)) if found[p] != expected[p]]
    if errors:
        head = '\n  '.join(errors[:40])
        more = f'\n  ... and {len(errors) - 40} more' if len(errors) > 40 else ''
        raise CheckpointError(
            f'{where} does not match the config (llm layers={config.llm.num_hidden_layers}, '
            f'hidden_size={config.llm.hidden_size}, vit={config.vit is not None}; '
            f'{len(errors)} problems):\n  {head}{more}')


def save_params(directory: str, config: BagelConfig, params: Mapping[str, Any],
                ae_params: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Writes ``params`` and ``ae_params`` (numpy or jax arrays) and the config files.

    Args:
      directory: created if missing; may already hold other files (e.g. ``tokenizer/``).
      params: the Bagel params (boxed params from ``init_params`` are unboxed).
      overwrite: replace an existing checkpoint in ``directory`` (else it is an error).
    Raises:
      CheckpointError if the trees do not match ``config`` or a checkpoint exists already.
    """
    tree = dict(bagel=nn.unbox(params), ae=nn.unbox(ae_params))
    _check_tree({p: tuple(np.shape(v)) for p, v in flatten(tree).items()}, config,
                'the params to save')
    path = os.path.abspath(os.path.join(directory, CHECKPOINT_DIR))
    if os.path.exists(path) and not overwrite:
        raise CheckpointError(f'{path} exists already: pass overwrite=True to replace it')
    os.makedirs(directory, exist_ok=True)
    with _checkpointer() as checkpointer:
        save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES), tree)
        checkpointer.save(path, args=ocp.args.PyTreeSave(tree, save_args=save_args),
                          force=overwrite)
    write_config_files(config, directory)


def _with_empty_ae(args: dict) -> dict:
    """Restore args always name the ``ae`` subtree, even when it is empty (the identity
    autoencoder of pixel-space models has no params)."""
    args.setdefault('ae', {})
    return args


def is_converted(directory: str) -> bool:
    """Whether ``directory`` holds a checkpoint written by ``save_params``."""
    return os.path.isdir(os.path.join(directory, CHECKPOINT_DIR))


def _checkpoint_path(directory: str) -> str:
    if not os.path.isdir(directory):
        raise CheckpointError(f'checkpoint directory {directory} does not exist')
    path = os.path.abspath(os.path.join(directory, CHECKPOINT_DIR))
    if not os.path.isdir(path):
        unfinished = [n for n in os.listdir(directory) if n.startswith(CHECKPOINT_DIR + '.')]
        hint = (f'an unfinished save left {unfinished}; convert again' if unfinished else
                f'found {sorted(os.listdir(directory))}; write one with save_params')
        raise CheckpointError(f'{directory} has no Orbax checkpoint {CHECKPOINT_DIR}/: {hint}')
    return path


def _sharding_tree(shardings: Any, like: Mapping[str, Any]) -> dict[str, Any] | None:
    """Flat ``{path: Sharding}`` for the flat tree ``like``: one Sharding is used for all."""
    if shardings is None:
        return None
    if isinstance(shardings, jax.sharding.Sharding):
        return {p: shardings for p in like}
    flat = flatten(shardings)
    if set(flat) != set(like):
        missing = sorted(set(like) - set(flat))[:5]
        extra = sorted(set(flat) - set(like))[:5]
        raise ValueError(f'shardings tree does not match the params: missing {missing}, '
                         f'unexpected {extra}')
    return flat


def load_params(directory: str, *, shardings: Any = None, ae_shardings: Any = None,
                dtype: Any = None, model_dtype: str = 'float32', bagel: bool = True
                ) -> tuple[BagelConfig, dict | None, dict]:
    """Reads a directory written by ``save_params``.

    Args:
      shardings: ``None`` (host numpy arrays), one ``jax.sharding.Sharding`` for every Bagel
        param, or a tree of them shaped like the params: restores jax.Arrays placed so.
      ae_shardings: the same for the autoencoder params.
      dtype: cast every param to this dtype while reading (default: keep the stored dtype).
      model_dtype: the compute dtype recorded in the returned config.
      bagel: ``False`` reads only the autoencoder (the Bagel params are returned as ``None``):
        for a run whose own checkpoint holds the policy.
    Returns:
      ``(config, params, ae_params)`` as nested dicts.
    Raises:
      CheckpointError / ConfigError for a missing, partial or mismatching directory.
    """
    path = _checkpoint_path(directory)
    config = load_config(directory, dtype=model_dtype)
    with _checkpointer() as checkpointer:
        try:
            metadata = checkpointer.metadata(path).item_metadata.tree
        except Exception as e:  # Orbax/tensorstore raise many types for unreadable files
            raise CheckpointError(f'cannot read the Orbax checkpoint {path}: {e}') from e
        if not isinstance(metadata, Mapping) or set(metadata) != set(_TREE_KEYS):
            raise CheckpointError(f'{path} holds {type(metadata).__name__} with keys '
                                  f'{sorted(metadata) if isinstance(metadata, Mapping) else []}'
                                  f', expected {list(_TREE_KEYS)}')
        meta = flatten(metadata)
        _check_tree({p: tuple(m.shape) for p, m in meta.items()}, config, path)
        by_key = {k: _sharding_tree(s, {p[len(k) + 1:]: m for p, m in meta.items()
                                        if p.startswith(k + '/')})
                  for k, s in zip(_TREE_KEYS, (shardings, ae_shardings))}
        restore_args = {}
        for p, m in meta.items():
            key, rest = p.split('/', 1)
            if key == 'bagel' and not bagel:
                continue
            cast = np.dtype(dtype) if dtype is not None else m.dtype
            if by_key[key] is None:
                restore_args[p] = ocp.RestoreArgs(restore_type=np.ndarray, dtype=cast)
            else:
                restore_args[p] = ocp.ArrayRestoreArgs(sharding=by_key[key][rest], dtype=cast,
                                                       global_shape=tuple(m.shape))
        args = _with_empty_ae(unflatten(restore_args))
        if bagel:
            tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
            return config, tree['bagel'], tree['ae']
        if not restore_args:  # nothing to read (the identity autoencoder has no params)
            return config, None, {}
        item = unflatten({p: jax.ShapeDtypeStruct(meta[p].shape, a.dtype)
                          for p, a in restore_args.items()})
        tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            item, restore_args=args, partial_restore=True))
    return config, None, tree['ae']
