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
(``[PIL.Image.fromarray(x) for x in images]``). Requests are scored one at a time (the scorer
need not be thread-safe); ``GET /health`` answers while a request is being scored. POST to any
path scores; a bad request answers 400, a scorer that raises answers 500 (the client retries).
"""

import http.server
import importlib
import json
import sys
import threading

from absl import app, flags, logging

from unigrpo_jax.rewards import remote

_PORT = flags.DEFINE_integer('port', 18085, 'Port to listen on; 0 picks a free one.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on; 0.0.0.0 for all.')
_SCORER = flags.DEFINE_string('scorer', None, 'The scorer, as module:function.', required=True)


def load_scorer(spec: str) -> remote.Scorer:
    module_name, sep, function_name = spec.partition(':')
    if not sep or not module_name or not function_name:
        raise app.UsageError(f'--scorer={spec!r}: expected module:function, e.g. '
                             f'unigrpo_jax.rewards.remote:mean_brightness_scorer')
    scorer = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(scorer):
        raise app.UsageError(f'--scorer={spec!r}: {module_name} has no callable {function_name}')
    return scorer


def make_handler(scorer: remote.Scorer, scorer_name: str) -> type:
    scoring = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):

        def _send_json(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_error(self, status: int, message: str) -> None:
            self._send_json(status, json.dumps({'error': message}).encode('utf-8'))

        def do_GET(self):  # pylint: disable=invalid-name
            if self.path != '/health':
                self._send_error(404, f'GET {self.path}: only GET /health exists; POST to score')
                return
            self._send_json(200, json.dumps({
                'status': 'ok', 'protocol': remote.PROTOCOL, 'scorer': scorer_name,
            }).encode('utf-8'))

        def do_POST(self):  # pylint: disable=invalid-name
            try:
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                images, metadata = remote.decode_request(body)
            except ValueError as error:
                self._send_error(400, f'bad request: {error}')
                return
            try:
                with scoring:
                    answer = remote.score_request(scorer, images, metadata)
            except Exception as error:  # the client retries; the server keeps serving
                logging.exception('scorer %s failed on %d images', scorer_name, len(images))
                self._send_error(500, f'scorer {scorer_name} failed: '
                                      f'{type(error).__name__}: {error}')
                return
            self._send_json(200, answer)

        def log_message(self, format, *args):  # pylint: disable=redefined-builtin
            logging.info('%s %s', self.address_string(), format % args)

    return Handler


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    scorer = load_scorer(_SCORER.value)
    server = http.server.ThreadingHTTPServer(
        (_HOST.value, _PORT.value), make_handler(scorer, _SCORER.value))
    host, port = server.server_address[:2]
    # The first stdout line says where the server listens (tests read the port from it).
    print(f'serving {_SCORER.value} on http://{host}:{port} (protocol {remote.PROTOCOL})',
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == '__main__':
    sys.exit(app.run(main))
