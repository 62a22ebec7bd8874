"""Modules at a conventional place, found on disk without importing anything else.

The registries (rewards, prompt sources) import these modules on their first look-up, so a
package adds a reward or a prompt source by holding a module of the agreed name; nothing lists
them.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

PACKAGE = 'unigrpo_jax'


def modules_named(name: str, every_module_of: str | None = None) -> list[str]:
    """``unigrpo_jax.<package>.<name>`` for every sub-package holding a module ``name``, plus
    every module of ``unigrpo_jax.<every_module_of>`` when given; sorted (``pkgutil`` on the
    installed package's directories, so no other package is imported)."""
    found = set()
    for root in importlib.import_module(PACKAGE).__path__:
        for package in pkgutil.iter_modules([root]):
            if not package.ispkg:
                continue
            directory = os.path.join(package.module_finder.path, package.name)
            for module in pkgutil.iter_modules([directory]):
                if module.ispkg or module.name.startswith('_'):
                    continue
                if package.name == every_module_of or module.name == name:
                    found.add(f'{PACKAGE}.{package.name}.{module.name}')
    return sorted(found)


def qualified_name(fn) -> str:
    """``module.qualname`` of a registered function: the same function registered again (its
    module reloaded) has the same name, another one with the same short name does not."""
    return f'{fn.__module__}.{fn.__qualname__}'


def import_all(modules: list[str]) -> None:
    """Imports ``modules`` (their registration decorators run)."""
    for module in modules:
        importlib.import_module(module)
