"""GenEval's scoring rules on detections: strict correctness, FlowGRPO's partial credit, accuracy.

Metadata (GenEval's format): ``{'tag', 'include': [clause, ...], 'exclude'?: [clause, ...],
'prompt'}``; an include clause is ``{'class', 'count', 'color'?, 'position'?: [relation, index]}``
where ``relation`` is one of ``RELATIONS`` and ``index`` names the include clause the relation is
to ("a photo of a dog right of a teddy bear": clause 1 ``dog`` has ``['right of', 0]``, clause 0
is ``teddy bear``). An exclude clause is ``{'class', 'count'}``.

Detections (one image): a list of dicts ``{'class': str, 'color': str | None,
'center': (x, y) px, 'box': (x0, y0, x1, y1) px}``, x to the right and y down.

Relations compare centres with a margin ``threshold`` (px): "left of" holds if the subject's x is
smaller than the target's by >= threshold, "above" if its y is smaller by >= threshold (and
"right of" / "below" mirror them); the other axis is free. (GenEval's own detector-based rule
scales the margin with the box sizes and asks the offset to point mostly along the axis; a caller
with real detections can pass its own threshold to the same rule.)

Our detections carry no confidence, so where GenEval takes the ``count`` most confident objects
of a class and checks those, we ask whether *some* ``count`` objects qualify (see
``strict_correct``).
"""

from __future__ import annotations

from collections import defaultdict

RELATIONS = ('left of', 'right of', 'above', 'below')
# relation -> (axis of the centre (0: x, 1: y), sign): holds if sign * (subject - target) >= margin.
_DIRECTION = {'left of': (0, -1), 'right of': (0, 1), 'above': (1, -1), 'below': (1, 1)}


def _direction(relation: str) -> tuple[int, int]:
    if relation not in _DIRECTION:
        raise ValueError(f'unknown relation {relation!r}; expected one of {RELATIONS}')
    return _DIRECTION[relation]


def relation_holds(subject_center, target_center, relation: str, threshold: float) -> bool:
    """Whether the subject centre ``(x, y)`` is at ``relation`` to the target centre."""
    axis, sign = _direction(relation)
    return sign * (subject_center[axis] - target_center[axis]) >= threshold


def _of_class(detections: list[dict], name: str) -> list[dict]:
    return [d for d in detections if d['class'] == name]


def _qualifying(detections: list[dict], clause: dict) -> list[dict]:
    """The detections of the clause's class, with its colour if it names one."""
    return [d for d in _of_class(detections, clause['class'])
            if 'color' not in clause or d['color'] == clause['color']]


def _all_pairs_hold(subjects, targets, relation: str, threshold: float) -> bool:
    return all(relation_holds(s['center'], t['center'], relation, threshold)
               for s in subjects for t in targets)


def _relation_satisfiable(subjects, n_subjects, targets, n_targets, relation, threshold) -> bool:
    """Whether some ``n_subjects`` subjects stand at ``relation`` to some ``n_targets`` targets.

    The relation is a margin on one coordinate, so the best choice is the ``n_subjects`` subjects
    farthest in the relation's direction and the ``n_targets`` targets farthest the other way.
    """
    axis, sign = _direction(relation)
    subjects = sorted(subjects, key=lambda d: -sign * d['center'][axis])[:n_subjects]
    targets = sorted(targets, key=lambda d: sign * d['center'][axis])[:n_targets]
    return (len(subjects) == n_subjects and len(targets) == n_targets
            and _all_pairs_hold(subjects, targets, relation, threshold))


def metadata_problem(metadata: dict) -> str | None:
    """What makes ``metadata`` unusable for GenEval scoring (None: nothing): an ``include``
    list of clauses with a string ``class`` and a count >= 1, positions naming another clause
    by index with one of ``RELATIONS``, and exclude clauses with ``class`` and ``count``."""
    include = metadata.get('include')
    if not isinstance(include, list) or not include:
        return 'no "include" list of GenEval clauses (e.g. [{"class": "dog", "count": 1}])'
    for kind, clauses in (('include', include), ('exclude', metadata.get('exclude', []))):
        if not isinstance(clauses, list):
            return f'"{kind}" is not a list'
        for k, c in enumerate(clauses):
            if not (isinstance(c, dict) and isinstance(c.get('class'), str)
                    and isinstance(c.get('count'), int) and c['count'] >= 1):
                return f'{kind} clause {k} needs a string "class" and an integer "count" >= 1'
            position = c.get('position') if kind == 'include' else None
            if position is not None and not (
                    isinstance(position, list) and len(position) == 2
                    and position[0] in RELATIONS and isinstance(position[1], int)
                    and 0 <= position[1] < len(include) and position[1] != k):
                return (f'include clause {k} has position {position!r}: expected [relation, '
                        f'index of another clause], relation one of {RELATIONS}')
    return None


def strict_correct(detections: list[dict], metadata: dict, *, threshold: float) -> bool:
    """GenEval's correctness: every include clause holds and no exclude clause is violated.

    An include clause ``{class, count, color?}`` holds if at least ``count`` detections have the
    class (and the colour). With ``position: [relation, j]`` it holds if some ``count`` of those
    and some ``count_j`` detections qualifying for clause ``j`` stand at ``relation`` pairwise
    (every chosen subject to every chosen target), ``threshold`` px being the relation's margin.
    An exclude clause ``{class, count}`` is violated by ``>= count`` detections of the class (any
    colour, as in GenEval).
    """
    include = metadata['include']
    for clause in include:
        qualifying = _qualifying(detections, clause)
        if len(qualifying) < clause['count']:
            return False
        if 'position' in clause:
            relation, index = clause['position']
            target = include[index]
            if not _relation_satisfiable(qualifying, clause['count'],
                                         _qualifying(detections, target), target['count'],
                                         relation, threshold):
                return False
    return all(len(_of_class(detections, clause['class'])) < clause['count']
               for clause in metadata.get('exclude', []))


def partial_credit(detections: list[dict], metadata: dict, *, threshold: float) -> float:
    """FlowGRPO's GenEval training reward in [0, 1]: the mean of per-clause terms.

    For include clause ``c`` with ``n = count``, ``F`` the detections of its class and ``C`` those
    of them with its colour (``C = F`` without a colour), ``exact(c) = |F| == n and |C| == n``:

    - count term, every clause:   ``max(0, 1 - |n - |F|| / n)``;
    - colour term, if ``color``:  ``|C| / n`` if ``|F| == n`` else ``0``;
    - position term, if ``position = [relation, j]``: ``1`` if ``exact(c)`` and ``exact(j)`` and
      every object of ``C`` is at ``relation`` to every object of ``C_j``, else ``0``.

    reward = sum of the terms / number of terms. Exclude clauses do not enter (over-counting
    already lowers the count term).

    Where this follows ``shared/docs/algorithm.md`` §10 rather than flow_grpo's ``evaluate_reward``
    (yifan123/reward-server, ``reward_server/gen_eval.py``): flow_grpo does not clip the count
    term (``n = 1`` with 3 found gives -1); it adds a single 0 when the count is wrong even for a
    clause with both a colour and a position; it adds no position term when the colour fails; and
    when a relation fails it adds both a 0 and a 1. Here every clause always contributes one
    term per attribute it names, so the number of terms depends on the prompt only.
    """
    include = metadata['include']
    if not include:
        raise ValueError(f'partial_credit needs at least one include clause; {metadata!r} has none')
    found = [_of_class(detections, c['class']) for c in include]
    qualifying = [_qualifying(detections, c) for c in include]
    exact = [len(f) == c['count'] and len(q) == c['count']
             for c, f, q in zip(include, found, qualifying)]
    terms = []
    for i, clause in enumerate(include):
        n = clause['count']
        terms.append(max(0.0, 1.0 - abs(n - len(found[i])) / n))
        if 'color' in clause:
            terms.append(len(qualifying[i]) / n if len(found[i]) == n else 0.0)
        if 'position' in clause:
            relation, j = clause['position']
            holds = exact[i] and exact[j] and _all_pairs_hold(qualifying[i], qualifying[j],
                                                              relation, threshold)
            terms.append(float(holds))
    return sum(terms) / len(terms)


def tag_accuracy(results: list[tuple[str, bool]]) -> dict[str, float]:
    """Accuracy per tag from ``(tag, correct)`` pairs, and ``'overall'``: the mean over the tags.

    As GenEval reports it, ``overall`` weighs each tag present equally, whatever its count.
    """
    by_tag = defaultdict(list)
    for tag, correct in results:
        by_tag[tag].append(bool(correct))
    accuracy = {tag: sum(v) / len(v) for tag, v in by_tag.items()}
    if not accuracy:
        raise ValueError('tag_accuracy needs at least one (tag, correct) result; got none')
    accuracy['overall'] = sum(accuracy.values()) / len(accuracy)
    return accuracy
