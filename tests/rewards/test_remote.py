"""The remote reward client against local servers: round trip, batching, timeouts, retries,
garbage answers, a server that is down, and launch/reward_server.py end to end."""

import contextlib
import http.server
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from unigrpo_jax.errors import ConfigError
from unigrpo_jax.rewards import registry, remote, server

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Back-off small enough that every failing test stays well under a second.
FAST = dict(timeout_s=2.0, retries=2, backoff_s=0.001, max_backoff_s=0.002)


@contextlib.contextmanager
def serving(respond):
    """Serves ``respond(request body) -> (status, answer bytes)`` on 127.0.0.1.

    Yields (url, the request bodies received, in order).
    """
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):

        def do_POST(self):  # pylint: disable=invalid-name
            body = self.rfile.read(int(self.headers['Content-Length']))
            received.append(body)
            status, answer = respond(body)
            self.send_response(status)
            self.send_header('Content-Length', str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format, *args):  # pylint: disable=redefined-builtin
            del format, args

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    # A slow handler answering a client that gave up fails to write; that is expected.
    server.handle_error = lambda request, client_address: None
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}/', received
    finally:
        server.shutdown()
        server.server_close()


def scoring(scorer):
    """A responder that scores like launch/reward_server.py does."""

    def respond(body):
        images, metadata = remote.decode_request(body)
        return 200, remote.score_request(scorer, images, metadata)

    return respond


def in_turn(*responders):
    """A responder answering the k-th request with the k-th responder (the last one after)."""
    calls = []

    def respond(body):
        calls.append(None)
        return responders[min(len(calls), len(responders)) - 1](body)

    return respond


def constant(status, answer):
    return lambda body: (status, answer)


def random_batch(batch_size, height=8, width=6, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, [batch_size, height, width, 3], np.uint8)
    metadata = [{'tag': 'single_object', 'include': [{'class': 'cow', 'count': 1}],
                 'prompt': f'a photo of cow {i}'} for i in range(batch_size)]
    return images, metadata


def expected_brightness(images):
    return (images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0).astype(np.float32)


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def test_scores_round_trip_with_images_arriving_bit_exact():
    images, metadata = random_batch(5)
    seen = []

    def record(images, prompts, metadata):
        seen.append((images, prompts, metadata))
        return remote.mean_brightness_scorer(images, prompts, metadata)

    with serving(scoring(record)) as (url, _):
        reward = registry.make_reward('remote', {'url': url, 'batch_size': 8})
        scores = reward(images, metadata)
    assert scores.dtype == np.float32 and scores.shape == (5,)
    np.testing.assert_allclose(scores, expected_brightness(images), rtol=1e-6)
    [(server_images, prompts, server_metadata)] = seen
    assert server_images.dtype == np.uint8
    np.testing.assert_array_equal(server_images, images)
    assert prompts == [m['prompt'] for m in metadata]
    assert server_metadata == metadata


def test_a_batch_is_sent_in_chunks_of_batch_size_and_reassembled_in_order():
    images, metadata = random_batch(5)
    with serving(scoring(remote.mean_brightness_scorer)) as (url, received):
        settings = remote.settings_from_options({'url': url, 'batch_size': 2})
        scores, details = remote.query_server(images, metadata, settings)
    assert [len(json.loads(body)['images']) for body in received] == [2, 2, 1]
    np.testing.assert_allclose(scores, expected_brightness(images), rtol=1e-6)
    np.testing.assert_allclose([d['mean_rgb'] for d in details],
                               images.mean(axis=(1, 2)) / 255.0, rtol=1e-6)


def test_retries_succeed_after_transient_server_errors():
    images, metadata = random_batch(3)
    failing = constant(500, b'{"error": "GPU busy"}')
    with serving(in_turn(failing, failing, scoring(remote.mean_brightness_scorer))) as (
            url, received):
        scores = registry.make_reward('remote', {'url': url, **FAST})(images, metadata)
    assert len(received) == 3
    np.testing.assert_allclose(scores, expected_brightness(images), rtol=1e-6)


def test_back_off_doubles_from_backoff_s_up_to_max_backoff_s(monkeypatch):
    sleeps = []
    monkeypatch.setattr(remote.time, 'sleep', sleeps.append)
    with serving(constant(500, b'{"error": "down"}')) as (url, received):
        reward = registry.make_reward('remote', {
            'url': url, 'retries': 4, 'backoff_s': 0.01, 'max_backoff_s': 0.025})
        with pytest.raises(remote.RewardServerError):
            reward(*random_batch(1))
    assert len(received) == 5
    assert sleeps == [0.01, 0.02, 0.025, 0.025]


def test_a_server_slower_than_timeout_s_fails_after_the_retries():
    def slow(body):
        time.sleep(1.0)
        return scoring(remote.mean_brightness_scorer)(body)

    with serving(slow) as (url, received):
        reward = registry.make_reward('remote', {**FAST, 'url': url, 'timeout_s': 0.1,
                                                 'retries': 1})
        start = time.monotonic()
        with pytest.raises(remote.RewardServerError,
                           match=r'2 tries.*try 1: no answer within timeout_s=0.1.*try 2: no'):
            reward(*random_batch(2))
    assert time.monotonic() - start < 0.9
    assert len(received) == 2


class WritesAFileWhenUnpickled:
    """A pickle that would run code on the trainer if anything unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


@pytest.mark.parametrize('case, answer, score_range, message', [
    ('not json', b'<html>502 Bad Gateway</html>', None, 'is not JSON'),
    ('not utf-8', b'\xff\xfe\x00garbage', None, 'not UTF-8 JSON'),
    ('json list', b'[0.5, 0.5]', None, 'JSON list, expected an object'),
    ('no scores', b'{"rewards": [0.5, 0.5]}', None, '`scores` has None'),
    ('too few', b'{"scores": [0.5]}', None, '`scores` has 1 entries, expected a list of 2'),
    ('too many', b'{"scores": [0.5, 0.5, 0.5]}', None, '3 entries, expected a list of 2'),
    ('nan', b'{"scores": [NaN, 0.5]}', None, 'contains NaN'),
    ('infinity', b'{"scores": [0.5, -Infinity]}', None, 'contains -Infinity'),
    ('overflow', b'{"scores": [0.5, 1e999]}', None, 'non-finite'),
    ('strings', b'{"scores": ["0.5", 0.5]}', None, 'non-numeric'),
    ('booleans', b'{"scores": [true, false]}', None, 'non-numeric'),
    ('out of range', b'{"scores": [0.5, 1.5]}', (0.0, 1.0), r'outside \[0.0, 1.0\]'),
    ('bad details', b'{"scores": [0.5, 0.5], "details": [{}]}', None, '`details` has 1 entries'),
])
def test_garbage_answers_raise_after_the_retries(case, answer, score_range, message):
    del case
    with serving(constant(200, answer)) as (url, received):
        reward = registry.make_reward('remote', {'url': url, 'score_range': score_range, **FAST})
        with pytest.raises(remote.RewardServerError) as raised:
            reward(*random_batch(2))
    assert len(received) == 3
    assert re.search(message, str(raised.value))
    assert url in str(raised.value) and 'in 3 tries' in str(raised.value)


def test_pickled_answers_are_never_unpickled(tmp_path):
    marker = tmp_path / 'unpickled'
    answer = pickle.dumps({'scores': [0.5, 0.5], 'payload': WritesAFileWhenUnpickled(str(marker))})
    with serving(constant(200, answer)) as (url, received):
        with pytest.raises(remote.RewardServerError, match='invalid answer'):
            registry.make_reward('remote', {'url': url, **FAST})(*random_batch(2))
    assert len(received) == 3
    assert not marker.exists()


def test_a_server_that_is_down_raises_after_the_retries():
    url = f'http://127.0.0.1:{free_port()}/'
    with pytest.raises(remote.RewardServerError,
                       match=r'in 3 tries.*try 1: cannot connect.*try 3: cannot connect'):
        registry.make_reward('remote', {'url': url, **FAST})(*random_batch(2))


def test_a_failing_chunk_fails_the_whole_batch():
    good = scoring(remote.mean_brightness_scorer)
    with serving(in_turn(good, constant(500, b'{"error": "oom"}'))) as (url, received):
        reward = registry.make_reward('remote', {'url': url, 'batch_size': 2, **FAST})
        with pytest.raises(remote.RewardServerError, match='HTTP 500.*oom'):
            reward(*random_batch(4))
    assert len(received) == 4  # chunk 1 once, chunk 2 three times


@pytest.mark.parametrize('options, message', [
    ({'url': 'http://x', 'batch_sise': 4}, r"unknown remote reward options \['batch_sise'\]"),
    ({'batch_size': 4}, 'need a server `url`'),
    ({'url': 'http://x', 'batch_size': 0}, 'batch_size=0 must be >= 1'),
    ({'url': 'http://x', 'retries': -1}, 'retries=-1 must be >= 0'),
    ({'url': 'http://x', 'score_range': (1, 0)}, r'score_range=\(1.0, 0.0\)'),
])
def test_bad_options_are_rejected_when_the_reward_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        registry.make_reward('remote', options)


def test_images_that_are_not_uint8_rgb_are_rejected():
    reward = registry.make_reward('remote', {'url': 'http://127.0.0.1:1/'})
    with pytest.raises(ValueError, match=r'uint8 \[B, H, W, 3\], got float32'):
        reward(np.zeros([2, 4, 4, 3], np.float32), [{}, {}])


def test_requests_that_break_the_protocol_are_refused():
    images, metadata = random_batch(2)
    body = json.loads(remote.encode_request(images, metadata))
    with pytest.raises(ValueError, match="protocol is None"):
        remote.decode_request(json.dumps({**body, 'protocol': None}).encode())
    with pytest.raises(ValueError, match='list of 2 objects'):
        remote.decode_request(json.dumps({**body, 'metadata': metadata[:1]}).encode())
    with pytest.raises(ValueError, match='not a base64 PNG'):
        remote.decode_request(json.dumps({**body, 'images': ['aGVsbG8=', 'aGVsbG8=']}).encode())


def test_flow_grpo_style_scorers_send_scores_without_details():
    images, metadata = random_batch(2)
    answer = json.loads(remote.score_request(
        lambda images, prompts, metadata: (np.array([0.25, 0.75]), {}), images, metadata))
    assert answer == {'protocol': remote.PROTOCOL, 'scores': [0.25, 0.75]}
    with pytest.raises(ValueError, match='scorer returned 1 scores for 2 images'):
        remote.score_request(lambda *args: ([0.5], {}), images, metadata)


def detections_from_metadata(images, prompts, metadata):
    """A stand-in detector: it "sees" the detections each metadata dict lists under 'seen'."""
    del prompts
    return [0.0] * len(images), [m['seen'] for m in metadata]


def detection(name, color, x):
    return {'class': name, 'color': color, 'center': [x, 4.0], 'box': [x - 1, 3, x + 1, 5]}


def test_geneval_remote_grades_the_servers_detections():
    brown_cow = {'tag': 'colors', 'include': [{'class': 'cow', 'count': 1, 'color': 'brown'}],
                 'prompt': 'a photo of a brown cow'}
    dog_left_of_cat = {'tag': 'position', 'prompt': 'a photo of a dog left of a cat',
                       'include': [{'class': 'cat', 'count': 1},
                                   {'class': 'dog', 'count': 1, 'position': ['left of', 0]}]}
    metadata = [
        {**brown_cow, 'seen': [detection('cow', 'brown', 2.0)]},  # all right
        {**brown_cow, 'seen': [detection('cow', 'black', 2.0)]},  # colour wrong
        {**brown_cow, 'seen': []},  # nothing found
        {**dog_left_of_cat, 'seen': [detection('dog', 'white', 2.0),
                                     detection('cat', 'gray', 6.0)]},  # all right
        {**dog_left_of_cat, 'seen': [detection('dog', 'white', 6.0),
                                     detection('cat', 'gray', 2.0)]},  # position wrong
    ]
    images = random_batch(len(metadata))[0]
    with serving(scoring(detections_from_metadata)) as (url, received):
        partial = registry.make_reward('geneval_remote',
                                       {'url': url, 'batch_size': 2, 'threshold': 1.0})
        strict = registry.make_reward('geneval_remote',
                                      {'url': url, 'threshold': 1.0, 'strict': True})
        partial_scores = partial(images, metadata)
        strict_scores = strict(images, metadata)
    assert len(received) == 3 + 1  # partial: chunks of 2, 2, 1; strict: one chunk
    assert partial_scores.dtype == np.float32 and strict_scores.dtype == np.float32
    np.testing.assert_allclose(partial_scores, [1.0, 0.5, 0.0, 1.0, 2 / 3], rtol=1e-6)
    np.testing.assert_array_equal(strict_scores, [1.0, 0.0, 0.0, 1.0, 0.0])


def test_geneval_remote_needs_a_position_threshold():
    with pytest.raises(ValueError, match='geneval_remote options need `threshold`'):
        registry.make_reward('geneval_remote', {'url': 'http://127.0.0.1:1/'})


def test_geneval_remote_needs_details():
    with serving(scoring(lambda images, prompts, metadata: ([0.0] * len(images), {}))) as (
            url, received):
        reward = registry.make_reward('geneval_remote', {'url': url, 'threshold': 1.0, **FAST})
        with pytest.raises(remote.RewardServerError, match='`details` has None'):
            reward(*random_batch(2))
    assert len(received) == 3


def test_reward_server_script_end_to_end(tmp_path):
    stderr_path = tmp_path / 'server.stderr'
    with open(stderr_path, 'w') as stderr:
        server = subprocess.Popen(
            [sys.executable, os.path.join(REPO_ROOT, 'launch', 'reward_server.py'), '--port=0',
             '--scorer=unigrpo_jax.rewards.remote:mean_brightness_scorer'],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        first_line = server.stdout.readline()
        listening = re.search(r'on (http://127\.0\.0\.1:\d+)', first_line)
        assert listening, f'no address in {first_line!r}; stderr: {stderr_path.read_text()}'
        base = listening.group(1)
        with urllib.request.urlopen(f'{base}/health', timeout=5) as response:
            health = json.loads(response.read())
        assert health == {'status': 'ok', 'protocol': remote.PROTOCOL,
                          'scorer': 'unigrpo_jax.rewards.remote:mean_brightness_scorer'}

        images, metadata = random_batch(3)
        scores = registry.make_reward('remote', {'url': f'{base}/', 'batch_size': 2})(
            images, metadata)
        np.testing.assert_allclose(scores, expected_brightness(images), rtol=1e-6)

        bad = urllib.request.Request(f'{base}/', data=b'{"images": []}', method='POST')
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=5)
        assert refused.value.code == 400
        assert 'protocol' in json.loads(refused.value.read())['error']
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()


@pytest.fixture(scope='module')
def limited_server():
    """The reward server in this process (``rewards.server``) with small limits: 1 MiB bodies,
    1 s to read one, the default image-size limit; yields (host, port)."""
    application = server.make_app(server.load_scorer(
        'unigrpo_jax.rewards.remote:mean_brightness_scorer'), 'brightness',
        max_body_bytes=2**20, read_timeout_s=1.0, max_image_pixels=remote.MAX_IMAGE_PIXELS)
    listener = socket.create_server(('127.0.0.1', 0))
    uvicorn_server = server.make_server(application)
    thread = threading.Thread(target=uvicorn_server.run, kwargs=dict(sockets=[listener]),
                              daemon=True)
    thread.start()
    try:
        while not uvicorn_server.started:
            time.sleep(0.05)
        yield listener.getsockname()[:2]
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


def test_a_scorer_is_named_as_module_colon_function():
    assert server.load_scorer('unigrpo_jax.rewards.remote:mean_brightness_scorer') is (
        remote.mean_brightness_scorer)
    for spec, message in [('unigrpo_jax.rewards.remote', 'expected module:function'),
                          ('unigrpo_jax.rewards.remote:nothing', 'has no callable nothing')]:
        with pytest.raises(ConfigError, match=message):
            server.load_scorer(spec)


def _raw(address, head: bytes, body: bytes = b'', timeout: float = 10.0):
    """Sends ``head`` and ``body`` as they are; returns (status, error message, seconds)."""
    start = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as connection:
        connection.sendall(head + body)
        answer = b''
        while b'\r\n\r\n' not in answer or len(answer.split(b'\r\n\r\n', 1)[1]) < int(
                re.search(rb'content-length: (\d+)', answer, re.I).group(1)):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b' ', 2)[1])
    return status, json.loads(answer.split(b'\r\n\r\n', 1)[1])['error'], time.monotonic() - start


def _post_head(length: int) -> bytes:
    return (f'POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
            f'Content-Length: {length}\r\n\r\n').encode()


def _png_header(width: int, height: int) -> str:
    """A base64 PNG that declares ``width x height`` pixels (its data is not there)."""
    import base64
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data +
                struct.pack('>I', zlib.crc32(kind + data)))
    png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2,
                                                            0, 0, 0)) +
           chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))
    return base64.b64encode(png).decode()


def test_a_body_shorter_than_its_content_length_times_out_with_408(limited_server):
    status, error, seconds = _raw(limited_server, _post_head(1000), b'{"protocol": ')
    assert status == 408 and 'did not arrive within 1.0 s' in error and seconds < 8


def test_a_body_over_the_limit_is_413_before_it_is_read(limited_server):
    status, error, _ = _raw(limited_server, _post_head(200 * 2**20))  # 200 MiB announced
    assert status == 413 and 'more than the 1048576 allowed' in error


def test_deeply_nested_json_is_400(limited_server):
    body = b'[' * 100000 + b']' * 100000
    status, error, _ = _raw(limited_server, _post_head(len(body)), body)
    assert status == 400 and 'nests deeper than 32 levels' in error


def test_a_png_bomb_is_400_from_its_header(limited_server):
    _, metadata = random_batch(1)
    body = json.dumps({'protocol': remote.PROTOCOL, 'images': [_png_header(20000, 20000)],
                       'metadata': metadata}).encode()
    status, error, _ = _raw(limited_server, _post_head(len(body)), body)
    assert status == 400 and 'image' in error and 'too large' in error, error
    with pytest.raises(ValueError, match='8 x 8 pixels, more than the 40 allowed'):  # ours
        remote.decode_png(remote.encode_png(np.zeros([8, 8, 3], np.uint8)), max_pixels=40)


def test_a_pickled_body_is_told_the_protocol_is_json(limited_server):
    body = pickle.dumps({'images': [], 'prompts': []})
    status, error, _ = _raw(limited_server, _post_head(len(body)), body)
    assert status == 400 and 'pickle' in error and 'is JSON' in error


def test_a_request_without_content_length_is_411(limited_server):
    head = b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
    status, error, _ = _raw(limited_server, head, b'0\r\n\r\n')
    assert status == 411 and 'Content-Length' in error
