"""Reading compiled programs: per-device memory, and the bytes of collectives, the matmul FLOPs
and the memory traffic in the HLO text.

One rule for the collectives of every target (XLA:CPU, XLA:GPU, libtpu; ``collectives``):
bytes per call of the program = the sum over collective ops (``KINDS``) of the op's bytes times
the number of times it executes per call.

* An op's bytes: the larger of its operands' and its result's total size (for all-gather the
  gathered array, for reduce-scatter the array before scattering). An async pair
  (``all-gather-start`` / ``-done``, or an ``async-start`` / ``-update`` / ``-done`` around a
  computation that holds the op) is one op, its output the start's result element 1 (the
  result tuple repeats the operands, and collective-permute adds context scalars).
* Executions per call: the product, along every call path from ENTRY to the op's computation,
  of the trip counts of the while loops on it (the ``known_trip_count`` XLA:CPU and XLA:GPU
  write on a loop, else the count read from its condition ``i < N``: libtpu writes none; a
  loop whose condition has another form counts once); a computation reached by several paths
  counts once per path, conditional branches as if every branch ran. ``ops`` counts
  executions the same way.

The same executions per call weigh the compiled program's work (``work``; the compilers' own
``cost_analysis`` counts a loop body once, or is absent on XLA:GPU):

* ``flops``: matmul FLOPs per device, ``2 x result elements x contracted elements`` of every
  ``dot``, ``convolution`` (contracted: the kernel's elements less its output-feature
  dimension; libtpu writes matmuls as convolutions) and cuBLAS GEMM ``custom-call``, wherever
  it sits (in fusions too). Elementwise work is left out.
* ``bytes``: memory traffic per device, the operands' and the result's bytes of every
  instruction of a computation that runs as a program (ENTRY, loop bodies and conditions,
  ``call`` and ``conditional`` targets), fusions counted as one instruction: what a fusion
  reads and writes, not what happens in it. Structural instructions (``parameter``,
  ``tuple``, ``get-tuple-element``, ``constant``, ``bitcast``, ``while``, ``call``,
  ``conditional``) move nothing.
"""

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
_INSTRUCTION = re.compile(r'^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$')
_CALLEE = re.compile(
    r'\b(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_LOOP = re.compile(r'\bcondition=%?([\w.\-]+), body=%?([\w.\-]+)')
_INDEX = re.compile(r'\bindex=(\d+)')
_DIRECTION = re.compile(r'\bdirection=([A-Z]+)')
_INTEGER = re.compile(r'^\s*(-?\d+)\s*\)')

# An instruction: (result shape, opcode, the line after ``opcode(``).
Instruction = tuple[str, str, str]


def _shape_bytes(shape: str) -> int:
    return sum(_DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(',') if d)
               for dtype, dims in _ARRAY.findall(shape))


def _operands(rest: str) -> list[str]:
    """The operand names of ``op(...)``: ``rest`` up to its closing parenthesis."""
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == '('
        if ch == ')':
            if depth == 0:
                return re.findall(r'%([\w.\-]+)', rest[:i])
            depth -= 1
    return re.findall(r'%([\w.\-]+)', rest)


def _async_output(shape: str) -> str:
    """The output of an async ``*-start``'s result ``(operands, output[, context...])``: its
    top-level element 1 (``all-reduce-start``'s result, not a tuple, is the output itself)."""
    if not shape.startswith('('):
        return shape
    depth, elements, begin = 0, [], 1
    for i, ch in enumerate(shape):
        depth += ch in '([{'
        depth -= ch in ')]}'
        if (ch == ',' and depth == 1) or depth == 0:
            elements.append(shape[begin:i])
            begin = i + 1
        if depth == 0:
            break
    return elements[1] if len(elements) > 1 else shape


def _parse(hlo_text: str) -> tuple[dict[str, dict[str, Instruction]], dict[str, str], str]:
    """``({computation: {instruction: Instruction}}, {computation: its ROOT}, ENTRY's name)``
    of an HLO module's text (instructions in the order they are written)."""
    computations: dict[str, dict[str, Instruction]] = {}
    roots: dict[str, str] = {}
    entry = current = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            computations[current] = {}
            entry = current if line.startswith('ENTRY') else entry
            continue
        match = _INSTRUCTION.match(line)
        if current is None or not match:
            continue
        root, name, result, opcode, rest = match.groups()
        computations[current][name] = (result, opcode, rest)
        if root:
            roots[current] = name
    if entry is None:
        raise ValueError('no ENTRY computation in the HLO text')
    return computations, roots, entry


def _integer(computation: dict[str, Instruction], name: str) -> int | None:
    """The value of the integer ``constant`` that ``name`` is (through ``copy``s), or None."""
    while name in computation:
        _, opcode, rest = computation[name]
        if opcode == 'constant':
            literal = _INTEGER.match(rest)
            return int(literal.group(1)) if literal else None
        if opcode != 'copy':
            return None
        name = _operands(rest)[0]
    return None


def _trip_count(computations: dict[str, dict[str, Instruction]], roots: dict[str, str],
                caller: str, rest: str) -> int:
    """How many times the body of the ``while`` whose line after ``while(`` is ``rest`` (in
    computation ``caller``) runs: its ``known_trip_count`` (XLA:CPU and XLA:GPU write it), else
    read from a condition ``i < N`` (or ``N > i``) on tuple element ``k``, ``N`` a constant, with
    ``i``'s start (the while operand's element ``k``) and step (``i + s`` at element ``k`` of
    the body's ROOT tuple) where they are constants, 0 and 1 where not (libtpu writes no
    count); 1 when the condition is not of that form."""
    known = _TRIP_COUNT.search(rest)
    if known:
        return int(known.group(1))
    loop = _LOOP.search(rest)
    if not loop:
        return 1
    condition, body = loop.groups()
    cond = computations.get(condition, {})
    _, opcode, compare = cond.get(roots.get(condition), ('', '', ''))
    direction = _DIRECTION.search(compare)
    if opcode != 'compare' or not direction or direction.group(1) not in ('LT', 'GT'):
        return 1
    index, bound = _operands(compare)[::1 if direction.group(1) == 'LT' else -1]
    _, opcode, element = cond.get(index, ('', '', ''))
    limit = _integer(cond, bound)
    if opcode != 'get-tuple-element' or limit is None:
        return 1
    k = int(_INDEX.search(element).group(1))
    start, step = 0, 1
    calling = computations[caller]
    _, opcode, init = calling.get(_operands(rest)[0], ('', '', ''))
    if opcode == 'tuple':
        start = _integer(calling, _operands(init)[k])
        start = 0 if start is None else start
    looped = computations.get(body, {})
    _, opcode, out = looped.get(roots.get(body), ('', '', ''))
    if opcode == 'tuple':
        _, opcode, update = looped.get(_operands(out)[k], ('', '', ''))
        if opcode == 'add':
            steps = [_integer(looped, n) for n in _operands(update)]
            step = next((s for s in steps if s is not None and s > 0), 1)
    return max(-(-(limit - start) // step), 0)


_STRUCTURAL = frozenset(('parameter', 'tuple', 'get-tuple-element', 'constant', 'bitcast',
                         'while', 'call', 'conditional', 'after-all', 'partition-id',
                         'replica-id'))
_CONTROL = frozenset(('while', 'call', 'conditional'))  # their callees run as programs
_GEMM_TARGETS = ('__cublas$gemm', '__cublas$lt$matmul')
_LHS_CONTRACTING = re.compile(r'lhs_contracting_dims=\{([\d,]*)\}')
_GEMM_CONTRACTING = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')
_DIM_LABELS = re.compile(r'dim_labels=\w*_(\w+)->')


def _dims(shape: str) -> list[int]:
    """The dimensions of the first array in ``shape`` (a tuple's first element)."""
    found = _ARRAY.search(shape)
    return [int(d) for d in found.group(2).split(',') if d] if found else []


def _matmul_flops(instructions: dict[str, Instruction], result: str, opcode: str,
                  rest: str) -> int:
    """``2 x result elements x contracted elements`` of a dot, convolution or cuBLAS GEMM
    (``work``'s rule); 0 for any other instruction."""
    if opcode == 'dot':
        contracting = _LHS_CONTRACTING.search(rest)
    elif opcode == 'custom-call' and any(f'"{t}"' in rest for t in _GEMM_TARGETS):
        contracting = _GEMM_CONTRACTING.search(rest)
    elif opcode == 'convolution':
        labels = _DIM_LABELS.search(rest)
        kernel = _dims(instructions.get(_operands(rest)[1], ('',))[0])
        if not labels or len(labels.group(1)) != len(kernel):
            return 0
        return 2 * math.prod(_dims(result)) * math.prod(
            d for d, label in zip(kernel, labels.group(1)) if label != 'o')
    else:
        return 0
    lhs = _dims(instructions.get(_operands(rest)[0], ('',))[0])
    axes = [int(a) for a in re.findall(r'\d+', contracting.group(1))] if contracting else []
    return 2 * math.prod(_dims(result)) * math.prod(lhs[a] for a in axes if a < len(lhs))


def _callees(rest: str) -> list[str]:
    """The computations an instruction calls (``body=``, ``calls=``, ``to_apply=``, ...,
    conditional branches), from its line after ``opcode(``."""
    callees = _CALLEE.findall(rest)
    for branches in _BRANCHES.findall(rest):
        callees += re.findall(r'%?([\w.\-]+)', branches)
    return callees


def _operand_bytes(instructions: dict[str, Instruction], rest: str) -> int:
    """The total size of an instruction's operands (looked up by name in its computation)."""
    return sum(_shape_bytes(instructions.get(n, ('',))[0]) for n in _operands(rest))


def _per_call(hlo_text: str, own_cost) -> collections.Counter:
    """``own_cost(instructions, result, opcode, rest, runs_as_program)`` (a Counter) summed
    over every instruction of the module, each weighted by its executions per call (the module
    docstring's rule). ``runs_as_program``: the instruction's computation is ENTRY or the
    callee of a ``while``, ``call`` or ``conditional`` (not of a fusion, reducer, async op)."""
    computations, roots, entry = _parse(hlo_text)
    own: dict[str, collections.Counter] = {}
    calls: dict[str, list[tuple[str, int]]] = {}
    programs = {entry}
    for instructions in computations.values():
        for _, opcode, rest in instructions.values():
            if opcode in _CONTROL:
                programs.update(_callees(rest))
    for computation, instructions in computations.items():
        own[computation], calls[computation] = collections.Counter(), []
        for result, opcode, rest in instructions.values():
            if opcode in ('async-update', 'async-done'):  # their ``calls=`` is the start's
                continue
            times = (_trip_count(computations, roots, computation, rest)
                     if opcode == 'while' else 1)
            calls[computation] += [(c, times) for c in _callees(rest)]
            own[computation] += own_cost(instructions, result, opcode, rest,
                                         computation in programs)

    totals: dict[str, collections.Counter] = {}

    def total(name: str) -> collections.Counter:
        if name not in totals:
            out = collections.Counter(own.get(name, {}))
            for callee, times in calls.get(name, []):
                for k, v in total(callee).items():
                    out[k] += times * v
            totals[name] = out
        return totals[name]

    return total(entry)


def _collective_cost(instructions, result, opcode, rest, _) -> collections.Counter:
    kind = opcode.removesuffix('-start')
    if kind not in KINDS:
        return collections.Counter()
    result_bytes = _shape_bytes(_async_output(result) if opcode.endswith('-start') else result)
    return collections.Counter({kind: max(_operand_bytes(instructions, rest), result_bytes),
                                'ops': 1})


def collectives(hlo_text: str) -> tuple[dict[str, int], int]:
    """``({kind: bytes per call}, ops per call)`` of a compiled module's HLO text, by the rule
    of the module docstring (trip counts: ``_trip_count``)."""
    counts = _per_call(hlo_text, _collective_cost)
    return {k: counts[k] for k in KINDS}, counts['ops']


def _work_cost(instructions, result, opcode, rest, runs_as_program) -> collections.Counter:
    out = collections.Counter(flops=_matmul_flops(instructions, result, opcode, rest))
    if runs_as_program and opcode not in _STRUCTURAL:
        out['bytes'] += _shape_bytes(result) + _operand_bytes(instructions, rest)
    return out


def work(hlo_text: str) -> dict[str, int]:
    """``{'flops': matmul FLOPs, 'bytes': memory traffic}`` per device and call of a compiled
    module's HLO text (the module docstring's rule)."""
    counts = _per_call(hlo_text, _work_cost)
    return {'flops': counts['flops'], 'bytes': counts['bytes']}
