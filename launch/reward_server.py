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

The server (``unigrpo_jax.rewards.server``) is a Starlette app on uvicorn. Requests are scored
one at a time (the scorer need not be thread-safe; it runs in a worker thread), and ``GET
/health`` answers while a request is being scored. POST to any path scores. Every bad request gets a status and ``{"error": ...}``
instead of a dropped connection: 400 for a body that breaks the protocol (not JSON, a pickle,
JSON nested too deep, images of more than ``--max_image_pixels``), 411 without a
Content-Length, 413 for a body over ``--max_body_mb``, 408 for a body that has not arrived after
``--read_timeout_s`` (e.g. shorter than its Content-Length), 500 when the scorer raises (the
client retries).
"""

import socket
import sys

from absl import app, flags

from unigrpo_jax.errors import ConfigError
from unigrpo_jax.rewards import remote, server

_PORT = flags.DEFINE_integer('port', 18085, 'Port to listen on; 0 picks a free one.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on; 0.0.0.0 for all.')
_SCORER = flags.DEFINE_string('scorer', None, 'The scorer, as module:function.', required=True)
_MAX_BODY_MB = flags.DEFINE_float('max_body_mb', 256.0, 'Largest request body (MiB); 413 above.')
_READ_TIMEOUT_S = flags.DEFINE_float('read_timeout_s', 60.0, 'Seconds a request body may take '
                                     'to arrive; 408 after.')
_MAX_IMAGE_PIXELS = flags.DEFINE_integer('max_image_pixels', remote.MAX_IMAGE_PIXELS,
                                         'Largest image of a request, in pixels; 400 above.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    try:
        scorer = server.load_scorer(_SCORER.value)
    except ConfigError as e:
        raise app.UsageError(str(e)) from e
    application = server.make_app(scorer, _SCORER.value,
                                  max_body_bytes=int(_MAX_BODY_MB.value * 2**20),
                                  read_timeout_s=_READ_TIMEOUT_S.value,
                                  max_image_pixels=_MAX_IMAGE_PIXELS.value)
    listener = socket.create_server((_HOST.value, _PORT.value))
    host, port = listener.getsockname()[:2]
    # The first stdout line says where the server listens (tests read the port from it).
    print(f'serving {_SCORER.value} on http://{host}:{port} (protocol {remote.PROTOCOL})',
          flush=True)
    server.make_server(application).run(sockets=[listener])
    return 0


if __name__ == '__main__':
    sys.exit(app.run(main))
