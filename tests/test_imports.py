"""The packages of ``unigrpo_jax`` import each other without cycles, lower layers first.

Every module is read with ``ast`` (nothing is imported), every ``import`` / ``from ... import``
statement counts, including the lazy ones inside functions. A node of the graph is the first
name after ``unigrpo_jax.``: a sub-package (``model``, ``rollout``, ...) or a top-level module
(``viz``, ``config_files``). Imports by string (``importlib.import_module``: the reward
registry's discovery) are not seen.
"""

import ast
import pathlib

import pytest

PACKAGE = 'unigrpo_jax'
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first: a package imports only itself and packages before it.
LAYERS = [
    'errors',        # ConfigError: what a user's input causes
    'config_files',  # get_config() files by path
    'discovery',     # modules at a conventional place (what the registries import)
    'viz',           # image grids
    'parallel',      # mesh, sharding, joining a multi-process run
    'model',         # Bagel in Flax: config, layers, KV cache, latents
    'loading',       # what a run reads from disk: Bagel releases (converted), Orbax checkpoints, the tokenizer, the model factory
    'rewards',       # GenEval rules, the registry, remote rewards
    'rollout',       # generation: think-then-draw, ODE/SDE samplers
    'data',          # RL prompt sources: the registry, TFDS builders, the seeded stream
    'rl',            # advantages, objectives, replay
    'train',         # the RL loop, optimizer, checkpoints, run directories
    'shapes',        # ShapesEval, one wing: world, detector, prompts and their sources, reward, evaluation, SFT
    'experiments',   # ShapesEval end to end: the demo, the Table-2 runs and their report
    'config_reference',  # docs/configuration.md from the configs and the dataclasses they become
    'bench',         # benchmarks, parity checks
]


def _imported_names(tree: ast.AST, package: list[str]) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every import in ``tree`` (``package``: the dotted
    parts of the package the module is in, for relative imports)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module.split('.') if node.module else []
            if node.level:
                base = package[:len(package) - node.level + 1] + base
            if base == [PACKAGE]:  # from unigrpo_jax import viz, model: the names are modules
                found += [(f'{PACKAGE}.{alias.name}', node.lineno) for alias in node.names]
            else:
                found.append(('.'.join(base), node.lineno))
    return found


def _node(parts: list[str]) -> str | None:
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def package_graph(root: pathlib.Path = ROOT) -> tuple[set[str], dict[str, dict[str, list[str]]]]:
    """``(nodes, edges)``: ``edges[a][b]`` lists the ``file:line`` imports of ``b`` by ``a``."""
    nodes, edges = set(), {}
    for path in sorted(root.rglob('*.py')):
        parts = list(path.relative_to(root.parent).with_suffix('').parts)
        is_init = parts[-1] == '__init__'
        if is_init:
            parts = parts[:-1]
        source = _node(parts)
        if source is None:  # unigrpo_jax/__init__.py
            continue
        nodes.add(source)
        package = parts if is_init else parts[:-1]
        for name, line in _imported_names(ast.parse(path.read_text(), str(path)), package):
            target = _node(name.split('.'))
            if target is not None and target != source:
                where = f'{path.relative_to(root.parent)}:{line}'
                edges.setdefault(source, {}).setdefault(target, []).append(where)
    return nodes, edges


def find_cycle(edges: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of the graph, or None."""
    state: dict[str, str] = {}  # 'open' while on the DFS stack, then 'done'
    stack: list[str] = []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def describe(path: list[str], edges) -> str:
    return '\n'.join(f'  {a} -> {b}: {", ".join(edges[a][b])}' for a, b in zip(path, path[1:]))


def layer_violations(edges, layers: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(layers)}
    return [f'{a} -> {b}: {", ".join(where)}'
            for a, targets in sorted(edges.items()) for b, where in sorted(targets.items())
            if a in rank and b in rank and rank[b] >= rank[a]]


@pytest.fixture(scope='module')
def graph():
    return package_graph()


def test_every_package_has_a_place_in_the_layers(graph):
    nodes, _ = graph
    assert len(set(LAYERS)) == len(LAYERS)
    assert nodes - set(LAYERS) == set(), 'add the new packages to LAYERS'
    assert set(LAYERS) - nodes == set(), 'LAYERS names packages that do not exist'


def test_the_package_import_graph_has_no_cycle(graph):
    _, edges = graph
    cycle = find_cycle(edges)
    assert cycle is None, 'import cycle ' + ' -> '.join(cycle) + '\n' + describe(cycle, edges)


def test_packages_import_only_lower_layers(graph):
    _, edges = graph
    violations = layer_violations(edges, LAYERS)
    assert not violations, ('imports of the same or a higher layer (LAYERS, lowest first):\n'
                            + '\n'.join(violations))


def test_the_reader_sees_lazy_relative_and_from_package_imports(tmp_path):
    root = tmp_path / PACKAGE
    for package in ('low', 'high', 'mid'):
        (root / package).mkdir(parents=True)
        (root / package / '__init__.py').write_text('')
    (root / '__init__.py').write_text('')
    (root / 'util.py').write_text('import os\n')
    (root / 'high' / 'a.py').write_text(
        'from unigrpo_jax import util\n'
        'def f():\n    from ..low import b  # lazy, relative\n    return b\n')
    (root / 'high' / 'c.py').write_text('from . import a\nimport unigrpo_jax.mid.d\n')
    (root / 'mid' / 'd.py').write_text('from unigrpo_jax.high.a import f\n')
    (root / 'low' / 'b.py').write_text('import numpy\n')
    nodes, edges = package_graph(root)
    assert nodes == {'low', 'high', 'mid', 'util'}
    assert {a: sorted(b) for a, b in edges.items()} == {'high': ['low', 'mid', 'util'],
                                                       'mid': ['high']}
    assert edges['high']['low'] == ['unigrpo_jax/high/a.py:3']
    assert find_cycle(edges) == ['high', 'mid', 'high']
    assert layer_violations(edges, ['util', 'low', 'mid', 'high']) == [
        'mid -> high: unigrpo_jax/mid/d.py:1']


def documented_layers(path: pathlib.Path = ROOT.parent / 'docs' / 'architecture.md'
                      ) -> list[str]:
    """The packages of docs/architecture.md's layer table, in its row order (a row may name
    several: ``config_files``, ``viz``)."""
    names = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.split('|')]
        if len(cells) > 3 and cells[1].isdigit():
            names += [n.strip().strip('`').rstrip('/') for n in cells[2].split(',')]
    return names


def test_the_architecture_doc_lists_the_layers_in_order():
    assert documented_layers() == LAYERS, (
        'docs/architecture.md\'s layer table disagrees with LAYERS: make its rows the same '
        'packages in the same order')
