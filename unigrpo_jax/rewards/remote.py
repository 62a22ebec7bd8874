"""Rewards computed by an HTTP reward server, over a JSON protocol that never unpickles.

Protocol ``unigrpo-reward/1``
-----------------------------
Request: ``POST <url>`` with ``Content-Type: application/json`` and the body::

    {"protocol": "unigrpo-reward/1",
     "images": ["<base64 PNG>", ...],      # B images, 8-bit RGB, all the same size
     "metadata": [{...}, ...]}             # B JSON objects (GenEval format: tag, include,
                                           # exclude, prompt)

Answer: status 200 and the JSON body::

    {"scores": [float, ...],               # B finite numbers, one per image
     "details": [<any JSON>, ...]}         # optional: B per-image values (e.g. detections)

Any other key of the answer is ignored. A server that cannot score answers a non-200 status
with ``{"error": "<what went wrong>"}``: 400 for a request it cannot read, 500 when scoring
failed. ``GET <server>/health`` answers ``{"status": "ok", "protocol": "unigrpo-reward/1",
"scorer": "<module:function>"}``.

Images travel as PNG, so they arrive bit-exact; nothing on either side is ever unpickled
(flow_grpo's servers exchange pickles, which would let a server run code on the trainer; a
pickled body is refused with a 400 saying so). A request whose images have more than
``MAX_IMAGE_PIXELS`` pixels each, or whose JSON nests deeper than ``MAX_JSON_DEPTH``, is refused
(400) before anything is decoded in full; the server also bounds the body's size and the time
it takes to arrive (``launch/reward_server.py``: 413, 408).

Client
------
A batch is sent in chunks of ``batch_size`` images, one request per chunk. Every failure of a
request (cannot connect, no answer within ``timeout_s``, a non-200 status, an answer that is not
valid JSON, scores that are not ``B`` finite numbers inside ``score_range``) is retried after a
back-off of ``backoff_s * 2**k`` seconds (capped at ``max_backoff_s``) for retry ``k = 0, 1,
...``; after ``1 + retries`` failed tries of one chunk the reward raises ``RewardServerError``
naming the URL and what each try got. It never returns partial scores.

Rewards registered here: ``remote`` (the server's scores) and ``geneval_remote`` (the server
returns detections as ``details``; the reward grades them against the metadata with
``unigrpo_jax.rewards.geneval``). The server side is ``launch/reward_server.py``, which puts any
scorer ``(images, prompts, metadata) -> (scores, details)`` behind this protocol through
``decode_request`` and ``score_request``; ``mean_brightness_scorer`` is a demo scorer for tests.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import io
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http import client as http_client
from typing import Any

import numpy as np
from PIL import Image

from unigrpo_jax.rewards import geneval, registry

PROTOCOL = 'unigrpo-reward/1'

# Characters of a server's error answer quoted in a failure message.
QUOTED_ANSWER_CHARS = 200

Scorer = Callable[[np.ndarray, list[str], list[dict]], tuple[Any, Any]]


class RewardServerError(RuntimeError):
    """A reward server gave no valid scores within the allowed tries."""


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How to reach a reward server: the options of the ``remote`` reward."""

    url: str
    batch_size: int = 64
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    score_range: tuple[float, float] | None = None


def settings_from_options(options: Mapping[str, Any]) -> ServerSettings:
    """Checks the options of a remote reward (a ConfigDict or dict) and returns them."""
    options = dict(options)
    known = [field.name for field in dataclasses.fields(ServerSettings)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f'unknown remote reward options {unknown}; known options: {known}')
    if not options.get('url'):
        raise ValueError(f'remote reward options need a server `url`, got {options}')
    if options.get('score_range') is not None:
        lo, hi = options['score_range']
        options['score_range'] = (float(lo), float(hi))
    settings = ServerSettings(**options)
    lo, hi = settings.score_range or (-math.inf, math.inf)
    checks = [
        (settings.batch_size >= 1, f'batch_size={settings.batch_size} must be >= 1'),
        (settings.timeout_s > 0, f'timeout_s={settings.timeout_s} must be > 0'),
        (settings.retries >= 0, f'retries={settings.retries} must be >= 0'),
        (settings.backoff_s >= 0, f'backoff_s={settings.backoff_s} must be >= 0'),
        (settings.max_backoff_s >= 0, f'max_backoff_s={settings.max_backoff_s} must be >= 0'),
        (lo <= hi, f'score_range={settings.score_range} must be (lo, hi) with lo <= hi'),
    ]
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise ValueError(f'bad remote reward options for {settings.url}: {"; ".join(problems)}')
    return settings


def encode_png(image: np.ndarray) -> str:
    """uint8 ``[H, W, 3]`` -> base64 text of a lossless PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode('ascii')


MAX_IMAGE_PIXELS = 4096 * 4096  # per image of a request (Bagel draws up to 1024 x 1024)
MAX_JSON_DEPTH = 32              # nesting of a request's JSON (GenEval metadata needs 5)


def decode_png(text: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """base64 text of a PNG -> uint8 ``[H, W, 3]``; raises ValueError for anything else,
    including an image of more than ``max_pixels`` pixels (checked from its header, before
    anything is decompressed)."""
    try:
        png = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(png), formats=['PNG']) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f'image of {width} x {height} pixels, more than the '
                                 f'{max_pixels} allowed')
            if image.mode != 'RGB':
                raise ValueError(f'image mode is {image.mode}, expected RGB')
            return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as error:  # PIL's own limit, met at the header
        raise ValueError(f'image too large: {error}') from error
    except (binascii.Error, OSError, TypeError) as error:
        raise ValueError(f'not a base64 PNG: {error}') from error


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` has objects/lists nested more than ``limit`` deep (no recursion)."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth + 1 > limit:
                return True
            stack.extend((child, depth + 1)
                         for child in (node.values() if isinstance(node, dict) else node))
    return False


def encode_request(images: np.ndarray, metadata: Sequence[dict]) -> bytes:
    """The request body for images uint8 ``[B, H, W, 3]`` and their B metadata dicts."""
    return json.dumps({
        'protocol': PROTOCOL,
        'images': [encode_png(image) for image in images],
        'metadata': list(metadata),
    }, allow_nan=False).encode('utf-8')


def decode_request(body: bytes, max_pixels: int = MAX_IMAGE_PIXELS,
                   max_depth: int = MAX_JSON_DEPTH) -> tuple[np.ndarray, list[dict]]:
    """A request body -> (images uint8 ``[B, H, W, 3]``, B metadata dicts).

    Raises ValueError saying what is wrong with a body that does not follow the protocol
    (a pickle, not JSON, JSON nested deeper than ``max_depth``, images of more than
    ``max_pixels`` pixels, ...).
    """
    if body[:1] == b'\x80':  # a pickle's PROTO opcode: flow_grpo's client protocol
        raise ValueError(f'the body is a Python pickle; protocol {PROTOCOL} is JSON (a '
                         'flow_grpo pickle client cannot talk to this server: use '
                         'unigrpo_jax.rewards.remote, see its docstring)')
    try:
        request = json.loads(body)
    except RecursionError:
        raise ValueError(f'the JSON nests deeper than {max_depth} levels') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f'the body is not JSON: {error}') from None
    if _nests_deeper(request, max_depth):
        raise ValueError(f'the JSON nests deeper than {max_depth} levels')
    if not isinstance(request, dict) or request.get('protocol') != PROTOCOL:
        found = request.get('protocol') if isinstance(request, dict) else type(request).__name__
        raise ValueError(f'request protocol is {found!r}, expected {PROTOCOL!r}')
    images, metadata = request.get('images'), request.get('metadata')
    if not isinstance(images, list) or not images:
        raise ValueError('request `images` must be a non-empty list of base64 PNGs')
    if not isinstance(metadata, list) or len(metadata) != len(images):
        raise ValueError(f'request `metadata` must be a list of {len(images)} objects '
                         f'(one per image)')
    if not all(isinstance(m, dict) for m in metadata):
        raise ValueError('request `metadata` entries must be JSON objects')
    decoded = [decode_png(image, max_pixels) for image in images]
    shapes = sorted({image.shape for image in decoded})
    if len(shapes) != 1:
        raise ValueError(f'request images must all have one size, got shapes {shapes}')
    return np.stack(decoded), metadata


def _as_float_list(values: Any) -> list[float]:
    # numpy arrays and torch tensors (on any device, any dtype) both have `tolist`.
    return [float(v) for v in (values.tolist() if hasattr(values, 'tolist') else values)]


def _plain_json(value: Any) -> Any:
    # numpy arrays and scalars in a scorer's details become JSON lists and numbers.
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'scorer details hold a {type(value).__name__}, which JSON cannot carry')


def score_request(scorer: Scorer, images: np.ndarray, metadata: list[dict]) -> bytes:
    """Runs a scorer on a decoded request and returns the answer body.

    ``scorer(images uint8 [B, H, W, 3], prompts, metadata) -> (scores, details)``: the prompts
    are the metadata's ``prompt`` entries; ``scores`` is any sequence of B numbers (list, numpy
    array, torch tensor); ``details`` goes into the answer when it is a list of B JSON values
    and is left out otherwise (flow_grpo's scorers return a dict such as ``{}``). Raises
    ValueError when the scorer's answer cannot be sent.
    """
    prompts = [str(m.get('prompt', '')) for m in metadata]
    scores, details = scorer(images, prompts, metadata)
    scores = _as_float_list(scores)
    if len(scores) != len(images):
        raise ValueError(f'scorer returned {len(scores)} scores for {len(images)} images')
    answer = {'protocol': PROTOCOL, 'scores': scores}
    if isinstance(details, (list, tuple)) and len(details) == len(images):
        answer['details'] = list(details)
    return json.dumps(answer, allow_nan=False, default=_plain_json).encode('utf-8')


def _reject_constant(name: str) -> float:
    raise ValueError(f'answer contains {name}, which is not a number JSON allows')


def decode_answer(body: bytes, num_images: int, score_range: tuple[float, float] | None,
                  require_details: bool) -> tuple[np.ndarray, list[Any]]:
    """An answer body -> (scores float32 ``[B]``, B details; None each when none were sent).

    Raises ValueError saying what is wrong with an answer that does not follow the protocol.
    """
    try:
        answer = json.loads(body.decode('utf-8'), parse_constant=_reject_constant)
    except UnicodeDecodeError as error:
        raise ValueError(f'answer is not UTF-8 JSON text ({error})') from error
    except json.JSONDecodeError as error:
        raise ValueError(f'answer is not JSON ({error}); starts {body[:40]!r}') from error
    if not isinstance(answer, dict):
        raise ValueError(f'answer is a JSON {type(answer).__name__}, expected an object')
    scores = answer.get('scores')
    if not isinstance(scores, list) or len(scores) != num_images:
        found = f'{len(scores)} entries' if isinstance(scores, list) else repr(scores)[:80]
        raise ValueError(f'answer `scores` has {found}, expected a list of {num_images} numbers')
    bad = [(i, s) for i, s in enumerate(scores)
           if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)]
    if bad:
        raise ValueError(f'answer `scores` has non-finite or non-numeric entries (index, value) '
                         f'{bad[:5]}')
    if score_range is not None:
        lo, hi = score_range
        outside = [(i, s) for i, s in enumerate(scores) if not lo <= s <= hi]
        if outside:
            raise ValueError(f'answer `scores` outside [{lo}, {hi}] (index, value): {outside[:5]}')
    details = answer.get('details')
    if details is None and not require_details:
        details = [None] * num_images
    if not isinstance(details, list) or len(details) != num_images:
        found = f'{len(details)} entries' if isinstance(details, list) else repr(details)[:80]
        raise ValueError(f'answer `details` has {found}, expected a list of {num_images} entries')
    return np.asarray(scores, dtype=np.float32), details


def _post(url: str, body: bytes, timeout_s: float) -> bytes:
    request = urllib.request.Request(
        url, data=body, method='POST', headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read()


def _describe_failure(error: Exception, timeout_s: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        try:
            quoted = error.read()[:QUOTED_ANSWER_CHARS].decode('utf-8', errors='replace')
        except (OSError, http_client.HTTPException):
            quoted = '(error answer unreadable)'
        return f'HTTP {error.code} {error.reason}: {quoted}'
    if isinstance(error, TimeoutError) or (
            isinstance(error, urllib.error.URLError) and isinstance(error.reason, TimeoutError)):
        return f'no answer within timeout_s={timeout_s}'
    if isinstance(error, urllib.error.URLError):
        return f'cannot connect ({error.reason})'
    if isinstance(error, ValueError):
        return f'invalid answer: {error}'
    return f'{type(error).__name__}: {error}'


def _query_with_retries(body: bytes, num_images: int, settings: ServerSettings,
                        require_details: bool) -> tuple[np.ndarray, list[Any]]:
    tries = 1 + settings.retries
    failures = []
    for attempt in range(tries):
        if attempt:
            time.sleep(min(settings.backoff_s * 2 ** (attempt - 1), settings.max_backoff_s))
        try:
            answer = _post(settings.url, body, settings.timeout_s)
            return decode_answer(answer, num_images, settings.score_range, require_details)
        except (OSError, ValueError, http_client.HTTPException) as error:
            failures.append(f'try {attempt + 1}: {_describe_failure(error, settings.timeout_s)}')
    raise RewardServerError(
        f'reward server {settings.url} gave no valid scores for {num_images} images in {tries} '
        f'tries (retries={settings.retries}, backoff_s={settings.backoff_s}, '
        f'max_backoff_s={settings.max_backoff_s}): {"; ".join(failures)}. Check that the server '
        f'runs (GET /health) and speaks protocol {PROTOCOL}.')


def query_server(images: np.ndarray, metadata: Sequence[dict], settings: ServerSettings,
                 require_details: bool = False) -> tuple[np.ndarray, list[Any]]:
    """Scores images uint8 ``[B, H, W, 3]`` on the server, ``batch_size`` images a request.

    Returns (scores float32 ``[B]``, B details). Raises RewardServerError when a request fails
    all its tries, ValueError for images or metadata the protocol cannot carry.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f'images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}')
    if len(metadata) != len(images):
        raise ValueError(f'got {len(metadata)} metadata dicts for {len(images)} images')
    scores, details = [], []
    for start in range(0, len(images), settings.batch_size):
        chunk = slice(start, start + settings.batch_size)
        body = encode_request(images[chunk], metadata[chunk])
        chunk_scores, chunk_details = _query_with_retries(
            body, len(images[chunk]), settings, require_details)
        scores.append(chunk_scores)
        details.extend(chunk_details)
    return np.concatenate(scores) if scores else np.zeros([0], np.float32), details


@registry.register('remote')
def remote_reward(options: Mapping[str, Any]) -> registry.Reward:
    """The server's scores. Options: the fields of ``ServerSettings``."""
    settings = settings_from_options(options)

    def reward(images: np.ndarray, metadata: list[dict]) -> np.ndarray:
        return query_server(images, metadata, settings)[0]

    return reward


@registry.register('geneval_remote', metadata_problem=geneval.metadata_problem)
def geneval_remote_reward(options: Mapping[str, Any]) -> registry.Reward:
    """GenEval graded here from the server's detections (``details``: per image a list of
    ``{'class', 'color', 'center', 'box'}``); the server's own scores are not used.

    Options: the fields of ``ServerSettings``, ``threshold`` (required: the margin in pixels of
    the position relations, see ``geneval.relation_holds``) and ``strict`` (False: FlowGRPO's
    partial credit, the training reward; True: 1 if every GenEval clause holds, else 0).
    """
    options = dict(options)
    if options.get('threshold') is None:
        raise ValueError(f'geneval_remote options need `threshold`, the margin in pixels of the '
                         f'position relations (geneval.relation_holds); got {options}')
    grade = functools.partial(
        geneval.strict_correct if options.pop('strict', False) else geneval.partial_credit,
        threshold=float(options.pop('threshold')))
    settings = settings_from_options(options)

    def reward(images: np.ndarray, metadata: list[dict]) -> np.ndarray:
        _, detections = query_server(images, metadata, settings, require_details=True)
        return np.asarray([float(grade(d, m)) for d, m in zip(detections, metadata)], np.float32)

    return reward


def mean_brightness_scorer(images: np.ndarray, prompts: list[str],
                           metadata: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Demo scorer for tests: mean pixel value / 255 (in [0, 1]); details: mean RGB / 255."""
    del prompts, metadata
    mean_rgb = images.astype(np.float64).mean(axis=(1, 2)) / 255.0
    return mean_rgb.mean(axis=-1), [{'mean_rgb': rgb.tolist()} for rgb in mean_rgb]
