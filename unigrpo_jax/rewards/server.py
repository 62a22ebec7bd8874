"""The reward server: a scorer behind protocol ``unigrpo-reward/1`` (``remote.py`` is its
client), as a Starlette app on uvicorn. ``launch/reward_server.py`` runs it; its docstring says
what a scorer is and how each bad request is answered.

Requests are scored one at a time (the scorer need not be thread-safe; it runs in a worker
thread), and ``GET /health`` answers while a request is being scored. POST to any path scores.
"""

import importlib

import anyio
import uvicorn
from absl import logging
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from unigrpo_jax.errors import ConfigError
from unigrpo_jax.rewards import remote


def load_scorer(spec: str) -> remote.Scorer:
    """The scorer ``spec`` names as ``module:function``; ``ConfigError`` when it names none."""
    module_name, sep, function_name = spec.partition(':')
    if not sep or not module_name or not function_name:
        raise ConfigError(f'--scorer={spec!r}: expected module:function, e.g. '
                          f'unigrpo_jax.rewards.remote:mean_brightness_scorer')
    scorer = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(scorer):
        raise ConfigError(f'--scorer={spec!r}: {module_name} has no callable {function_name}')
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


def make_server(application: Starlette) -> uvicorn.Server:
    """A uvicorn server for ``application``: ``.run(sockets=[listener])`` serves until
    ``.should_exit`` is set (or SIGINT / SIGTERM in the main thread)."""
    return uvicorn.Server(uvicorn.Config(application, log_level='info', timeout_keep_alive=5))
