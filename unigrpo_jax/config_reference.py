"""The configuration reference (``docs/configuration.md``), generated from the sources.

Every meaning has one source; this module only gathers them:

- a config field's meaning is the comment at its first definition, in the first file of its
  family that defines it: the comment lines right above it (the field then starts its line),
  and the comment ending the line it starts on (no other field there could own it). A comment
  at a later definition (a variant changing the value) is that variant's reason;
- a copy (``config.eval_reward = config.reward.copy_and_resolve_references()``) means what its
  original means, field by field;
- ``model.random`` holds the fields of the model dataclasses (``model/config.py``,
  ``config_from_dict``), documented by the comments at those fields (a property by its
  docstring);
- a field of the SFT config without a comment of its own means what the same field of the RL
  config means (``Family.fallback``);
- what an RL run derives from its config is ``train.settings.Settings``, documented by the
  comments at its fields.

``render()`` is the whole file; ``launch/config_docs.py`` writes it or checks it is current.
A field with no meaning from any source stops ``render`` (``SourceError``), naming the file
to comment.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import os
import tokenize
import typing
from collections.abc import Iterator

import ml_collections

from unigrpo_jax import config_files
from unigrpo_jax.model import config as model_config
from unigrpo_jax.train import settings as settings_lib

Path = tuple[str, ...]
DOC = os.path.join(config_files.ROOT, 'docs', 'configuration.md')
COMMAND = 'python launch/config_docs.py'
# The config section that ``convert.factory.build_model`` turns into a ``BagelConfig``
# (``model_config.config_from_dict``): its fields are documented by the dataclasses.
MODEL_SIZES: Path = ('model', 'random')


class SourceError(ValueError):
    """A config field without a meaning, or a comment that could belong to several fields."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """``get_config(arg)`` of ``configs/<file>``."""

    file: str
    arg: str | None = None

    @property
    def name(self) -> str:
        return f'{self.file}:{self.arg}' if self.arg else self.file

    def load(self) -> ml_collections.ConfigDict:
        return config_files.load(os.path.join(config_files.CONFIGS, self.file), self.arg)


@dataclasses.dataclass(frozen=True)
class Family:
    """Configs with the same fields: ``variants[0]`` is the base, the others change it."""

    title: str
    variants: tuple[Variant, ...]
    fallback: Family | None = None  # where a field without a comment here takes its meaning

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(v.file for v in self.variants))


RL = Family('RL runs', (Variant('bagel_grpo.py'), Variant('bagel_grpo.py', 'tiny'),
                        Variant('shapes_unigrpo.py'), Variant('shapes_flowgrpo.py'),
                        Variant('shapes_textgrpo.py'), Variant('shapes_nft.py'),
                        Variant('shapes_uninft.py'), Variant('shapes_nft_exact.py')))
SFT = Family('Supervised fine-tuning',
             (Variant('shapes_sft.py'), Variant('shapes_sft.py', 'nothink'),
              Variant('shapes_sft.py', 'stage1'), Variant('shapes_sft.py', 'stage2')),
             fallback=RL)
FAMILIES = (RL, SFT)


# --- comments at definitions -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Definition:
    """Where a source assigns ``path``; ``alias``: the path it copies (``.copy()``)."""

    path: Path
    line: int
    col: int
    alias: Path | None = None
    comment: str = ''


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """``{line: (text, standalone)}`` of the comments of ``source``; ``standalone``: the
    comment is alone on its line."""
    lines = source.splitlines()
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line, col = tok.start
            text = tok.string[1:].strip()
            out[line] = (text, not lines[line - 1][:col].strip())
    return out


def _attach(source: str, found: list[Definition], filename: str) -> list[Definition]:
    """``found`` (fields of ``source``) with their comments: the comment lines right above a
    field that starts its line, and the comment ending the line a field starts on when no
    sub-field of it starts there too (``config.a.update(b=1)  # c``: c is ``a.b``'s).

    Raises ``SourceError`` for a comment that two fields starting on its line could own (not
    a field and its own sub-fields)."""
    comments, lines = _comments(source), source.splitlines()
    by_line: dict[int, list[Definition]] = {}
    for d in found:
        by_line.setdefault(d.line, []).append(d)
    out = []
    for d in found:
        on_line = [o.path for o in by_line[d.line]]
        text = []
        above, block = d.line - 1, []
        while above in comments and comments[above][1]:
            block.insert(0, comments[above][0])
            above -= 1
        if block and not lines[d.line - 1][:d.col].strip():  # d starts its line
            strangers = [p for p in on_line if p[:len(d.path)] != d.path]
            if strangers:
                raise SourceError(_ambiguous(filename, d.line, [d.path, *strangers]))
            text += block
        trailing = comments.get(d.line)
        innermost = [p for p in on_line if not any(q != p and q[:len(p)] == p for q in on_line)]
        if trailing and not trailing[1] and d.path in innermost:
            if len(innermost) > 1:
                raise SourceError(_ambiguous(filename, d.line, innermost))
            text.append(trailing[0])
        out.append(dataclasses.replace(d, comment=' '.join(text)))
    return out


def _ambiguous(filename: str, line: int, paths: list[Path]) -> str:
    names = ', '.join(dotted(p) for p in paths)
    return (f'{filename}:{line}: one comment for the fields {names}: put each commented field '
            'on a line of its own')


def _config_path(node: ast.AST) -> Path | None:
    """``('a', 'b')`` for the expression ``config.a.b``, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return tuple(parts) if isinstance(node, ast.Name) and node.id == 'config' and parts else None


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        return f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', None)
    return None


def _children(path: Path, value: ast.AST) -> list[Definition]:
    """The fields a ``ConfigDict(dict(k=...))`` / ``dict(k=...)`` / ``{'k': ...}`` value
    defines below ``path``."""
    if _call_name(value) in ('ConfigDict', 'dict'):
        return [d for arg in value.args for d in _children(path, arg)] + _keywords(
            path, value.keywords)
    out = []
    if isinstance(value, ast.Dict):
        for key, item in zip(value.keys, value.values):
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                out.append(Definition(path + (key.value,), key.lineno, key.col_offset))
                out += _children(path + (key.value,), item)
    return out


def _keywords(path: Path, keywords: list[ast.keyword]) -> list[Definition]:
    """The fields ``k=value`` keywords (of ``dict(...)``, ``.update(...)``) define below
    ``path``, with those of their values."""
    out = []
    for kw in keywords:
        if kw.arg is not None:
            out.append(Definition(path + (kw.arg,), kw.lineno, kw.col_offset))
            out += _children(path + (kw.arg,), kw.value)
    return out


def config_definitions(source: str, filename: str) -> list[Definition]:
    """Every field a config file's source defines, in source order, with its comment.

    Definitions: ``config.a.b = value`` (also in a tuple assignment), the fields of a dict
    value (``ConfigDict(dict(...))``, ``dict(...)``, ``{...}``), and the keywords of
    ``config.a.update(...)``; ``config.a = config.b.copy_and_resolve_references()`` (or
    ``.copy()``) is a definition of ``a`` with ``alias=('b',)``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = [(target, node.value)]
                if isinstance(target, ast.Tuple):
                    values = (node.value.elts if isinstance(node.value, ast.Tuple)
                              else [None] * len(target.elts))
                    pairs = list(zip(target.elts, values))
                for t, value in pairs:
                    path = _config_path(t)
                    if path is None:
                        continue
                    alias = None
                    if (_call_name(value) in ('copy_and_resolve_references', 'copy')
                            and not value.args):
                        alias = _config_path(value.func.value)
                    found.append(Definition(path, t.lineno, t.col_offset, alias))
                    if value is not None:
                        found += _children(path, value)
        elif _call_name(node) == 'update' and isinstance(node.func, ast.Attribute):
            path = _config_path(node.func.value)
            if path is not None:
                found.append(Definition(path, node.lineno, node.col_offset))
                found += _keywords(path, node.keywords)
    found.sort(key=lambda d: (d.line, d.col))
    return _attach(source, found, filename)


def class_fields(cls: type) -> dict[str, tuple[str, str, str]]:
    """``{name: (type, default, meaning)}`` of a dataclass's fields, in order, and of its
    properties that have a docstring (type: their return annotation, default ``derived``).
    Meanings: the comments at the fields (as ``config_definitions``), the properties'
    docstrings."""
    filename = inspect.getfile(cls)
    with open(filename) as f:
        source = f.read()
    tree = ast.parse(source, filename)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    found = [Definition((s.target.id,), s.lineno, s.col_offset) for s in node.body
             if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    comments = {d.path[0]: d.comment for d in _attach(source, found, filename)}
    out = {}
    for f in dataclasses.fields(cls):
        default = ('(required)' if f.default is dataclasses.MISSING else value_text(f.default))
        out[f.name] = (str(f.type), default, comments.get(f.name, ''))
    for s in node.body:
        is_property = isinstance(s, ast.FunctionDef) and any(
            getattr(d, 'id', None) == 'property' for d in s.decorator_list)
        if is_property and ast.get_docstring(s):
            out[s.name] = (ast.unparse(s.returns) if s.returns else '', 'derived',
                           ' '.join(ast.get_docstring(s).split()))
    return out


def _dataclass_of(annotation) -> type | None:
    """The dataclass in a field's type hint (``ViTConfig | None`` -> ``ViTConfig``)."""
    for t in (annotation, *typing.get_args(annotation)):
        if dataclasses.is_dataclass(t):
            return t
    return None


def model_classes() -> list[type]:
    """``BagelConfig`` and the dataclasses of its fields, depth first."""
    out = []

    def visit(cls):
        out.append(cls)
        for t in typing.get_type_hints(cls).values():
            sub = _dataclass_of(t)
            if sub is not None and sub not in out:
                visit(sub)
    visit(model_config.BagelConfig)
    return out


def model_field(rest: Path) -> tuple[str, str, str] | None:
    """``(type, default, meaning)`` of ``model.random.<rest>`` (``rest`` non-empty) from the
    model dataclasses, or None when ``rest`` names no field."""
    cls = model_config.BagelConfig
    for name in rest[:-1]:
        cls = _dataclass_of(typing.get_type_hints(cls).get(name))
        if cls is None:
            return None
    return class_fields(cls).get(rest[-1])


# --- meanings of a family's fields ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Meaning:
    text: str
    source: str  # the file the text is in: a config file or a dataclass module


@dataclasses.dataclass(frozen=True)
class Sources:
    """A family's definitions, read from its files: the first of each path (where its meaning
    is), the later commented ones (a variant's reasons), and the fallback family's."""

    family: Family
    first: dict[Path, Definition]
    first_file: dict[Path, str]
    reasons: dict[str, dict[Path, str]]        # file -> {path: comment at a later definition}
    order: dict[Path, tuple[int, int, int]]    # (file index, line, column) of the first
    docstrings: dict[str, str]                 # file -> its module docstring
    fallback: Sources | None

    @classmethod
    def of(cls, family: Family) -> Sources:
        first, first_file, reasons, order, docstrings = {}, {}, {}, {}, {}
        for index, file in enumerate(family.files):
            with open(os.path.join(config_files.CONFIGS, file)) as f:
                source = f.read()
            docstrings[file] = ast.get_docstring(ast.parse(source)) or ''
            for d in config_definitions(source, f'configs/{file}'):
                if d.path not in first:
                    first[d.path], first_file[d.path] = d, file
                    order[d.path] = (index, d.line, d.col)
                elif d.comment:
                    reasons.setdefault(file, {})[d.path] = d.comment
        fallback = None if family.fallback is None else cls.of(family.fallback)
        return cls(family, first, first_file, reasons, order, docstrings, fallback)


def meaning(s: Sources, path: Path) -> Meaning | None:
    """The meaning of a field (leaf or section), or None when no source gives one.

    In order: the comment at its first definition; its original's (a prefix defined as a
    copy); the model dataclasses' (below ``MODEL_SIZES``); the fallback family's."""
    d = s.first.get(path)
    if d is not None and d.comment:
        return Meaning(d.comment, f'configs/{s.first_file[path]}')
    for n in range(len(path) - 1, 0, -1):
        head = s.first.get(path[:n])
        if head is not None and head.alias is not None:
            original = head.alias + path[n:]
            m = meaning(s, original)
            return None if m is None else Meaning(f'as `{dotted(original)}`: {m.text}', m.source)
    if path[:len(MODEL_SIZES)] == MODEL_SIZES and len(path) > len(MODEL_SIZES):
        field = model_field(path[len(MODEL_SIZES):])
        if field is not None and field[2]:
            return Meaning(field[2], _relative(model_config.__file__))
    return None if s.fallback is None else meaning(s.fallback, path)


def leaves(config: ml_collections.ConfigDict, prefix: Path = ()
           ) -> Iterator[tuple[Path, object, type]]:
    """``(path, value, field type)`` of every leaf: a field that is not a non-empty
    ConfigDict (an empty one, ``{}``, is a leaf)."""
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict) and list(value.keys()):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value, config.get_type(key)


def undocumented(s: Sources) -> dict[Path, list[str]]:
    """``{field: [variants]}``: the leaves of the family's variants that have no meaning."""
    out: dict[Path, list[str]] = {}
    for v in s.family.variants:
        for path, _, _ in leaves(v.load()):
            if meaning(s, path) is None:
                out.setdefault(path, []).append(f'configs/{v.name}')
    return out


# --- rendering -----------------------------------------------------------------------------------

def dotted(path: Path) -> str:
    return '.'.join(path)


def _relative(path: str) -> str:
    return os.path.relpath(path, config_files.ROOT)


def value_text(value) -> str:
    """A value as a Markdown code span; paths inside the repository read ``<repo>/...``."""
    if isinstance(value, str) and value.startswith(config_files.ROOT + os.sep):
        value = '<repo>' + value[len(config_files.ROOT):]
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return f'`{_cell(repr(value))}`'


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell."""
    return text.replace('|', '\\|')


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
            *('| ' + ' | '.join(r) + ' |' for r in rows), '']


def _position(s: Sources, path: Path) -> tuple[int, int, int]:
    """``(file index, line, column)`` of the first definition of ``path``, else of its nearest
    defined ancestor; a field of a copy sits where its original does."""
    for n in range(len(path), 0, -1):
        head = s.first.get(path[:n])
        if head is not None and head.alias is not None and n < len(path):
            return _position(s, head.alias + path[n:])
        if path[:n] in s.order:
            return s.order[path[:n]]
    return (len(s.family.files), 0, 0)


def _order(s: Sources, path: Path, index: int) -> tuple:
    """The sort key of a leaf: its section's place, then its own (``index``, its place in the
    ConfigDict, breaks ties)."""
    return _position(s, path[:1]), _position(s, path), index


def _meaning_cell(s: Sources, path: Path) -> str:
    """A leaf's meaning (``render`` checked it has one), naming a source outside the family."""
    m = meaning(s, path)
    own = m.source in {f'configs/{f}' for f in s.family.files}
    return _cell(m.text if own else f'{m.text} (`{m.source}`)')


def _family_lines(s: Sources) -> list[str]:
    family, base = s.family, s.family.variants[0]
    configs = {v.name: v.load() for v in family.variants}
    base_leaves = list(leaves(configs[base.name]))
    ranked = sorted(range(len(base_leaves)), key=lambda i: _order(s, base_leaves[i][0], i))
    sections: dict[str, list] = {}
    for i in ranked:
        path = base_leaves[i][0]
        sections.setdefault(path[0] if len(path) > 1 else '', []).append(base_leaves[i])
    out = [f'## {family.title}: `configs/{base.file}`', '', s.docstrings[base.file], '']
    seen: set[Path] = set()
    for key, rows in sections.items():
        out += [f'### `{key}`' if key else '### Top-level fields', '']
        d = s.first.get((key,))
        if key and d is not None and d.comment:
            out += [d.comment, '']
        table = []
        for path, v, t in rows:
            for n in range(2, len(path)):  # a documented dict holding the leaf: a row first
                node = path[:n]
                if node not in seen and meaning(s, node) is not None:
                    table.append((f'`{dotted(node)}`', 'ConfigDict', '(fields below)',
                                  _meaning_cell(s, node)))
                seen.add(node)
            table.append((f'`{dotted(path)}`', getattr(t, '__name__', str(t)), value_text(v),
                          _meaning_cell(s, path)))
        out += _table(('field', 'type', 'default', 'meaning'), table)
    return out + _variant_lines(s, configs)


def _variant_lines(s: Sources, configs: dict[str, ml_collections.ConfigDict]) -> list[str]:
    """The table of the fields some variant changes, then each variant file's docstring and
    the comments at its values."""
    base, variants = s.family.variants[0], s.family.variants[1:]
    values = {name: {p: v for p, v, _ in leaves(c)} for name, c in configs.items()}
    order = {}
    for name in configs:
        for i, p in enumerate(values[name]):
            order.setdefault(p, _order(s, p, i))

    def cell(name: str, path: Path) -> str:
        v = values[name]
        if path in v:
            return value_text(v[path])
        below = any(p[:len(path)] == path for p in v)
        return 'fields below' if below else '-'

    changed = sorted((p for p in order
                      if len({cell(v.name, p) for v in s.family.variants}) > 1), key=order.get)
    out = [f'### Variants of `configs/{base.file}`', '',
           f'A column is `get_config(arg)` of `configs/file:arg`; a blank cell: as `{base.name}`; '
           '`-`: that config has no such field. Meanings of `model.random.*`: [the model '
           'dataclasses](#modelrandom-the-model-dataclasses).', '']
    out += _table(('field', *(f'`{name}`' for name in configs)), [
        (f'`{dotted(p)}`', cell(base.name, p),
         *('' if cell(v.name, p) == cell(base.name, p) else cell(v.name, p) for v in variants))
        for p in changed])
    for file in s.family.files:
        reasons = s.reasons.get(file, {})
        if file != base.file:
            out += [f'#### `configs/{file}`', '', s.docstrings[file], '']
        if reasons:
            out += [f'The comments at the values `configs/{file}` sets:', '']
        out += [f'- `{dotted(p)}`: {_cell(text)}' for p, text in reasons.items()]
        out += [''] if reasons else []
    return out


def _class_lines(cls: type, heading: str) -> list[str]:
    """A dataclass's heading, docstring and fields; raises ``SourceError`` naming the fields
    without a comment."""
    fields = class_fields(cls)
    missing = [name for name, (_, _, text) in fields.items() if not text]
    if missing:
        raise SourceError(f'{cls.__qualname__} fields {missing} have no comment: add one at each '
                          f'field in {_relative(inspect.getfile(cls))}')
    rows = [(f'`{name}`', f'`{_cell(t)}`' if t else '', default, _cell(text))
            for name, (t, default, text) in fields.items()]
    header = ('field', 'type', 'default', 'meaning')
    if all(default == '(required)' for _, default, _ in fields.values()):
        header, rows = header[:2] + header[3:], [r[:2] + r[3:] for r in rows]
    return [heading, '', inspect.getdoc(cls), '', *_table(header, rows)]


def _model_lines() -> list[str]:
    out = ['## `model.random`: the model dataclasses', '',
           f'`{dotted(MODEL_SIZES)}` (a random model instead of a checkpoint) is read by '
           '`unigrpo_jax.model.config.config_from_dict`:', '',
           inspect.getdoc(model_config.config_from_dict), '',
           'The fields of each dataclass (`unigrpo_jax/model/config.py`); a `derived` row is a '
           'property computed from the fields.', '']
    for cls in model_classes():
        out += _class_lines(cls, f'### `{cls.__name__}`')
    return out


def render() -> str:
    """The text of ``docs/configuration.md``.

    Raises ``SourceError`` naming the field and where to comment it when a leaf of a variant,
    a model dataclass field or a ``Settings`` field has no meaning."""
    families = [Sources.of(f) for f in FAMILIES]
    missing = [f'{dotted(path)} ({", ".join(names)})'
               for s in families for path, names in undocumented(s).items()]
    if missing:
        raise SourceError('config fields without a meaning: add a comment at the first '
                          'definition of ' + '; '.join(missing))
    out = ['# Configuration reference', '',
           f'Generated by `{COMMAND}` from the config files (`configs/*.py`) and the dataclasses '
           'they become: the comment at a field\'s definition is its meaning. Do not edit this '
           f'file: edit the comment, then run the command (`{COMMAND} --check` exits 1 while '
           'the file is stale, and so does `tests/launch/test_config_docs.py`).', '',
           'Change a field on the command line with `--config.<field>=<value>`, e.g. '
           '`--config.rollout.group_size=8`. A field the config does not have, or a value that '
           'does not parse as the field\'s type, stops the launcher with one line; an RL run '
           'then checks every value before it builds anything (`unigrpo_jax/train/settings.py` '
           'raises `ConfigError` naming the field, its value and what is allowed). Paths inside '
           'the repository are shown as `<repo>/...`.', '',
           *(f'- [{f.title}: `configs/{f.variants[0].file}`](#{_anchor(f)})' for f in FAMILIES),
           '- [`model.random`: the model dataclasses](#modelrandom-the-model-dataclasses)',
           '- [Derived settings: `Settings`](#derived-settings-settings)', '']
    for s in families:
        out += _family_lines(s)
    out += _model_lines()
    out += ['## Derived settings: `Settings`', '', inspect.getdoc(settings_lib), '',
            *_class_lines(settings_lib.Settings, '### `unigrpo_jax.train.settings.Settings`')]
    while out[-1] == '':
        out.pop()
    return '\n'.join(out) + '\n'


def _anchor(family: Family) -> str:
    """GitHub's anchor of a family's heading."""
    text = f'{family.title}: configs/{family.variants[0].file}'.lower().replace(' ', '-')
    return ''.join(c for c in text if c.isalnum() or c in '-_')


def stale(path: str, text: str) -> bool:
    """Whether the file at ``path`` is missing or differs from ``text`` (``render()``)."""
    if not os.path.isfile(path):
        return True
    with open(path) as f:
        return f.read() != text
