"""Reading compiled programs: per-device memory and the bytes of collectives in the HLO text
(conventions: ``sweep``'s module docstring)."""

from __future__ import annotations

import collections
import math
import re

KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')


def memory(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled program (``mem_*`` columns); empty if not reported."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = dict(mem_argument=m.argument_size_in_bytes, mem_output=m.output_size_in_bytes,
               mem_alias=m.alias_size_in_bytes, mem_temp=m.temp_size_in_bytes)
    out['mem_peak'] = (out['mem_argument'] + out['mem_output'] - out['mem_alias']
                       + out['mem_temp'])
    return out


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 's16': 2, 'u16': 2,
                'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
                'f64': 8, 'c64': 8, 'c128': 16}
_ARRAY = re.compile(r'\b([a-z]\w*)\[([\d,]*)\]')
_HEADER = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$')
_CALLEE = re.compile(
    r'\b(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _shape_bytes(shape: str) -> int:
    return sum(_DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(',') if d)
               for dtype, dims in _ARRAY.findall(shape))


def _operands(rest: str) -> str:
    """The operand list of ``op(...)``: ``rest`` up to its closing parenthesis."""
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == '('
        if ch == ')':
            if depth == 0:
                return rest[:i]
            depth -= 1
    return rest


def collectives(hlo_text: str) -> tuple[dict[str, int], int]:
    """``({kind: bytes per call}, ops per call)`` of a compiled module's HLO text (the
    convention of ``sweep``'s module docstring)."""
    shapes: dict[str, str] = {}
    own: dict[str, collections.Counter] = {}
    calls: dict[str, list[tuple[str, int]]] = {}
    entry = current = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            own[current], calls[current] = collections.Counter(), []
            entry = current if line.startswith('ENTRY') else entry
            continue
        match = _INSTRUCTION.match(line)
        if current is None or not match:
            continue
        name, result, opcode, rest = match.groups()
        shapes[name] = result
        if opcode in ('async-done', 'async-update'):
            continue
        trips = _TRIP_COUNT.search(rest)
        times = int(trips.group(1)) if opcode == 'while' and trips else 1
        callees = _CALLEE.findall(rest)
        for branches in _BRANCHES.findall(rest):
            callees += re.findall(r'%?([\w.\-]+)', branches)
        calls[current] += [(c, times) for c in callees]
        kind = opcode.removesuffix('-start')
        if kind not in KINDS:
            continue
        operand_bytes = sum(_shape_bytes(shapes.get(n, ''))
                            for n in re.findall(r'%([\w.\-]+)', _operands(rest)))
        result_bytes = _shape_bytes(result)
        if opcode.endswith('-start'):  # the result tuple repeats the operands
            result_bytes = max(result_bytes - operand_bytes, 0)
        own[current][kind] += max(operand_bytes, result_bytes)
        own[current]['ops'] += 1
    if entry is None:
        raise ValueError('no ENTRY computation in the HLO text')

    totals: dict[str, collections.Counter] = {}

    def total(name: str) -> collections.Counter:
        if name not in totals:
            out = collections.Counter(own.get(name, {}))
            for callee, times in calls.get(name, []):
                for k, v in total(callee).items():
                    out[k] += times * v
            totals[name] = out
        return totals[name]

    counts = total(entry)
    return {k: counts[k] for k in KINDS}, counts['ops']
