"""``get_config()`` files loaded by path, as ``--config=FILE[:arg]`` loads them.

Config files live outside the package (``configs/``); one builds on another with
``config_files.load(config_files.sibling(__file__, 'bagel_grpo.py'))``, and launch scripts
fall back to a default file the same way.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')


def sibling(config_file: str, name: str) -> str:
    """The path of ``name`` in the directory of ``config_file`` (a config's ``__file__``)."""
    return os.path.join(os.path.dirname(os.path.abspath(config_file)), name)


def load(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the file at ``path`` (``get_config()`` when ``arg`` is None)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    name = 'unigrpo_config_' + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise AttributeError(f'config file {path!r} has no get_config()')
    return module.get_config() if arg is None else module.get_config(arg)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for launchers with a ``--config`` file (``app.run(main,
    flags_parser=config_files.parse_flags)``): a ``--config.<field>=value`` override naming
    no field of the config, or a bad flag, stops with one line instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f'{argv[0]}: {e}\nPass --helpfull to see the flags.')
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a missing field
        key = str(e).strip('"\'')
        overrides = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
        named = [o for o in overrides if key in o[len('--config.'):].split('.')] or overrides
        sys.exit(f'{argv[0]}: {", ".join(named)}: the config has no field {key!r} (see the '
                 'config file for its fields)')
