r"""Serves a scorer as a reward server over protocol ``unigrpo-reward/1`` (see rewards/remote.py).

    python launch/reward_server.py --port=18085 \
        --scorer=unigrpo_jax.rewards.remote:mean_brightness_scorer

``--scorer=module:function`` names a scorer with flow_grpo's signature,
``scorer(images, prompts, metadata) -> (scores, details)``: ``images`` uint8 ``[B, H, W, 3]``
(numpy), ``prompts`` the metadata's ``prompt`` strings, ``metadata`` the request's GenEval
dicts; ``scores`` B numbers (a list, numpy array or torch tensor on any device); ``details`` a
list of B JSON values sent back per image (e.g. GenEval detections ``{'class', 'color',
'center', 'box'}`` for the ``geneval_remote`` reward), or anything else (flow_grpo returns
``{}``) to send none.

flow_grpo's rewards are factories that build such a scorer (``pickscore_score(device)``
returns ``_fn(images, prompts, metadata) -> (scores, {})``), so a three-line module puts one
behind this server::

    # my_scorers.py (on the reward machine, next to flow_grpo)
    from flow_grpo import rewards
    pickscore = rewards.pickscore_score('cuda')

    PYTHONPATH=. python launch/reward_server.py --port=18085 --scorer=my_scorers:pickscore

A scorer whose images must be PIL images converts them in such a module
(``[PIL.Image.fromarray(x) for x in images]``).

The server is a Starlette app on uvicorn. Requests are scored one at a time (the scorer need not
be thread-safe; it runs in a worker thread), and ``GET /health`` answers while a request is being
scored. POST to any path scores. Every bad request gets a status and ``{"error": ...}``
instead of a dropped connection: 400 for a body that breaks the protocol (not JSON, a pickle,
JSON nested too deep, images of more than ``--max_image_pixels``), 411 without a
Content-Length, 413 for a body over ``--max_body_mb``, 408 for a body that has not arrived after
``--read_timeout_s`` (e.g. shorter than its Content-Length), 500 when the scorer raises (the
client retries).
"""

import importlib
import socket
import sys

import anyio
import uvicorn
from absl import app, flags, logging
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from unigrpo_jax.rewards import remote

_PORT = flags.DEFINE_integer('port', 18085, 'Port to listen on; 0 picks a free one.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on; 0.0.0.0 for all.')
_SCORER = flags.DEFINE_string('scorer', None, 'The scorer, as module:function.', required=True)
_MAX_BODY_MB = flags.DEFINE_float('max_body_mb', 256.0, 'Largest request body (MiB); 413 above.')
_READ_TIMEOUT_S = flags.DEFINE_float('read_timeout_s', 60.0, 'Seconds a request body may take '
                                     'to arrive; 408 after.')
_MAX_IMAGE_PIXELS = flags.DEFINE_integer('max_image_pixels', remote.MAX_IMAGE_PIXELS,
                                         'Largest image of a request, in pixels; 400 above.')


def load_scorer(spec: str) -> remote.Scorer:
    module_name, sep, function_name = spec.partition(':')
    if not sep or not module_name or not function_name:
        raise app.UsageError(f'--scorer={spec!r}: expected module:function, e.g. '
                             f'unigrpo_jax.rewards.remote:mean_brightness_scorer')
    scorer = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(scorer):
        raise app.UsageError(f'--scorer={spec!r}: {module_name} has no callable {function_name}')
    return scorer


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b''.join(chunks)


def make_app(scorer: remote.Scorer, scorer_name: str, *, max_body_bytes: int,
             read_timeout_s: float, max_image_pixels: int) -> Starlette:
    """The reward server's ASGI app (protocol ``remote.PROTOCOL``) with its limits."""
    scoring = anyio.Lock()

    async def health(request: Request) -> Response:
        del request
        return JSONResponse({'status': 'ok', 'protocol': remote.PROTOCOL,
                             'scorer': scorer_name})

    async def not_found(request: Request) -> Response:
        return _error(404, f'GET {request.url.path}: only GET /health exists; POST to score')

    async def score(request: Request) -> Response:
        length = request.headers.get('content-length')
        if length is None or not length.isdigit():
            return _error(411, f'a Content-Length header is needed (got {length!r})')
        if int(length) > max_body_bytes:
            return _error(413, f'the body has {length} bytes, more than the {max_body_bytes} '
                               'allowed (--max_body_mb); send fewer images per request')
        try:
            with anyio.fail_after(read_timeout_s):
                body = await _read_body(request, max_body_bytes)
        except TimeoutError:
            return _error(408, f'the body of {length} bytes did not arrive within '
                               f'{read_timeout_s} s')
        except _TooLarge:
            return _error(413, f'the body is longer than the {max_body_bytes} bytes allowed')
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        try:
            images, metadata = await anyio.to_thread.run_sync(
                lambda: remote.decode_request(body, max_pixels=max_image_pixels))
        except ValueError as error:
            return _error(400, f'bad request: {error}')
        async with scoring:
            try:
                answer = await anyio.to_thread.run_sync(remote.score_request, scorer, images,
                                                        metadata)
            except Exception as error:  # the client retries; the server keeps serving
                logging.exception('scorer %s failed on %d images', scorer_name, len(images))
                return _error(500, f'scorer {scorer_name} failed: {type(error).__name__}: '
                                   f'{error}')
        return Response(answer, media_type='application/json')

    return Starlette(routes=[Route('/health', health, methods=['GET']),
                             Route('/{path:path}', score, methods=['POST']),
                             Route('/{path:path}', not_found, methods=['GET'])])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    scorer = load_scorer(_SCORER.value)
    application = make_app(scorer, _SCORER.value,
                           max_body_bytes=int(_MAX_BODY_MB.value * 2**20),
                           read_timeout_s=_READ_TIMEOUT_S.value,
                           max_image_pixels=_MAX_IMAGE_PIXELS.value)
    listener = socket.create_server((_HOST.value, _PORT.value))
    host, port = listener.getsockname()[:2]
    # The first stdout line says where the server listens (tests read the port from it).
    print(f'serving {_SCORER.value} on http://{host}:{port} (protocol {remote.PROTOCOL})',
          flush=True)
    server = uvicorn.Server(uvicorn.Config(application, log_level='info', timeout_keep_alive=5))
    server.run(sockets=[listener])
    return 0


if __name__ == '__main__':
    sys.exit(app.run(main))
