"""`kcnn serve`: TensorFlow Serving's REST API on onnxruntime, tried over the loopback by real HTTP clients against
real server processes.

The module's server is the whole command on a run directory (`python -m kcnn serve RUN --port 0`: the model
converted to ONNX in a temporary folder, then the serving process): every endpoint against TF Serving's response
structure, answers equal to onnxruntime's own on the ONNX file it serves and to the Keras model's within 1e-4,
client code written for TF Serving, b64 PNG and JPEG, every bad request (the error, then a good request served),
16 concurrent clients. The other servers start the serving process directly (`kcnn.deploy.serve.server_command()`: no
Keras import, a second each): an ONNX export folder stopped by SIGTERM with requests in flight, a model.onnx file
without batching, and the refusals of the command line. The limits (a body too large, too slow or cut off, idle and
half-sent connections, SIGTERM with slow clients, a model giving NaN) are tried on a tiny ONNX model written with
onnx's helper, by raw sockets where the client must misbehave.
"""

import base64
import concurrent.futures
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from kcnn.deploy import serve as kcnn_serve

from helpers import deterministic_weights, temper_logits

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHAPE = (32, 32, 3)
_rng = np.random.default_rng(23)  # eight images, noise of a colour each: the random model tells several apart
IMAGES = (_rng.uniform(0, 1, (8, *SHAPE)) * _rng.uniform(0, 255, (8, 1, 1, 3))).astype(np.uint8)
URL_LINE = re.compile(r"kcnn serve: http://127\.0\.0\.1:(\d+)/ ")


class Server:
    """A server process started with `args`; its output is collected as it comes. Waits for the line giving its URL
    (the socket listens from then on)."""

    def __init__(self, args, timeout=120):
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + timeout
        while not any(URL_LINE.search(line) for line in self.lines):
            if self.process.poll() is not None:
                self.reader.join(5)
                raise AssertionError(f"the server ended with {self.process.returncode}:\n{self.output}")
            assert time.monotonic() < deadline, f"no URL after {timeout} s:\n{self.output}"
            time.sleep(0.05)
        self.port = int(next(URL_LINE.search(line) for line in self.lines if URL_LINE.search(line)).group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.onnx = next(re.match(r"kcnn serve: (\S+\.onnx) as model", line) for line in self.lines
                         if re.match(r"kcnn serve: (\S+\.onnx) as model", line)).group(1)

    @property
    def output(self):
        return "".join(self.lines)

    def stop(self):
        """SIGTERM; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.reader.join(5)
        return code


def serving_process(*args):
    """The serving process alone (what `kcnn serve` becomes), on `args`."""
    return [*kcnn_serve.server_command(), *map(str, args)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory: lenet5 at 32x32x3 with varied deterministic weights and tempered logits, its class names in
    metrics.json; and the Keras model's probabilities for IMAGES."""
    import keras

    import kcnn

    run = tmp_path_factory.mktemp("serve") / "run"
    run.mkdir()
    model = kcnn.build("lenet5", input_shape=SHAPE, num_classes=len(CLASSES))
    deterministic_weights(model)
    temper_logits(model, IMAGES.astype("float32"))
    model.save(run / "model.keras")
    (run / "metrics.json").write_text(json.dumps({"class_names": CLASSES}))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(IMAGES.astype("float32"))))
    return run, expected


@pytest.fixture(scope="module")
def server(run_dir):
    """`python -m kcnn serve RUN --port 0`: the run's model converted to ONNX (a TensorFlow child process), then
    served; stopped at the end by SIGTERM, which must end it with 0 and remove the temporary folder."""
    server = Server([sys.executable, "-m", "kcnn", "serve", str(run_dir[0]), "--port", "0"])
    assert re.search(r"kcnn serve: converting \S+model\.keras to ONNX", server.output), server.output
    yield server
    folder = os.path.dirname(os.path.dirname(server.onnx))
    assert server.stop() == 0, server.output
    assert "kcnn serve: stopped" in server.output and "Traceback" not in server.output, server.output
    assert not os.path.exists(folder), f"the conversion's temporary folder {folder} is left behind"


@pytest.fixture(scope="module")
def onnx_session(server):
    import onnxruntime

    return onnxruntime.InferenceSession(server.onnx)


def predict(server, body, path="/v1/models/model:predict"):
    response = requests.post(server.url + path, data=json.dumps(body), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def png(pixels, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---- the REST API ------------------------------------------------------------------------------------------------


STATUS = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}


def tensor(name, dtype, *sizes):
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in sizes],
                                             "unknown_rank": False}, "name": name}


# What TensorFlow Serving answers for kcnn's SavedModel (kcnn.deploy.export: serving_default, input image, three outputs).
METADATA = {"model_spec": {"name": "model", "signature_name": "", "version": "1"},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": {"image": tensor("serving_default_image:0", "DT_FLOAT", -1, 32, 32, 3)},
                "outputs": {"class_index": tensor("StatefulPartitionedCall:0", "DT_INT32", -1),
                            "class_name": tensor("StatefulPartitionedCall:1", "DT_STRING", -1),
                            "probabilities": tensor("StatefulPartitionedCall:2", "DT_FLOAT", -1, 10)},
                "method_name": "tensorflow/serving/predict"}}}}}


@pytest.mark.parametrize("path", ["/v1/models/model", "/v1/models/model/versions/1"])
def test_model_status(server, path):
    response = requests.get(server.url + path, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == STATUS


@pytest.mark.parametrize("path", ["/v1/models/model/metadata", "/v1/models/model/versions/1/metadata"])
def test_model_metadata(server, path):
    response = requests.get(server.url + path, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == METADATA


def test_row_and_columnar_answers_are_onnxruntimes_and_keras(server, onnx_session, run_dir):
    images = IMAGES[:5]
    probabilities, indices = onnx_session.run(["probabilities", "class_index"], {"image": images.astype("float32")})
    rows = predict(server, {"instances": images.tolist()})["predictions"]
    assert [set(row) for row in rows] == [{"probabilities", "class_index", "class_name"}] * 5
    # the JSON numbers are float32's shortest decimals: read back as float32, exactly onnxruntime's
    np.testing.assert_array_equal(np.array([row["probabilities"] for row in rows], np.float32), probabilities)
    assert [row["class_index"] for row in rows] == indices.tolist() == probabilities.argmax(-1).tolist()
    assert [row["class_name"] for row in rows] == [CLASSES[i] for i in indices]
    np.testing.assert_allclose(probabilities, run_dir[1][:5], rtol=0, atol=1e-4)  # and the Keras model's
    assert len(set(indices.tolist())) > 1  # answers that differ between images

    columns = {"class_index": [row["class_index"] for row in rows], "class_name": [row["class_name"] for row in rows],
               "probabilities": [row["probabilities"] for row in rows]}
    for body in ({"inputs": images.tolist()}, {"inputs": {"image": images.tolist()}},
                 {"signature_name": "serving_default", "inputs": images.astype("float32").tolist()}):
        assert predict(server, body) == {"outputs": columns}
    for body in ({"instances": [{"image": image.tolist()} for image in images]},
                 {"signature_name": "serving_default", "instances": images.tolist()}):
        assert predict(server, body) == {"predictions": rows}
    assert predict(server, {"instances": images.tolist()}, "/v1/models/model/versions/1:predict")["predictions"] == rows


def test_client_code_written_for_tensorflow_serving_works_unchanged(server, onnx_session):
    """The requests example of TensorFlow Serving's tutorial (tensorflow.org/tfx/tutorials/serving/rest_simple)."""
    x = IMAGES[:3].astype("float32")
    data = json.dumps({"signature_name": "serving_default", "instances": x.tolist()})
    headers = {"content-type": "application/json"}
    json_response = requests.post(f"{server.url}/v1/models/model:predict", data=data, headers=headers)
    predictions = json.loads(json_response.text)["predictions"]
    expected = onnx_session.run(["probabilities"], {"image": x})[0]
    np.testing.assert_array_equal(np.array([p["probabilities"] for p in predictions], np.float32), expected)
    assert [p["class_name"] for p in predictions] == [CLASSES[i] for i in expected.argmax(-1)]


def test_b64_png_and_jpeg_are_decoded_and_resized_as_pillow_does(server):
    pixels = IMAGES[0]
    nested = predict(server, {"instances": [pixels.tolist()]})["predictions"][0]
    for instance in ({"b64": png(pixels)}, {"image": {"b64": png(pixels)}}):  # a PNG at the model's size: same pixels
        assert predict(server, {"instances": [instance]})["predictions"][0] == nested
    assert predict(server, {"inputs": [{"b64": png(pixels)}]})["outputs"]["probabilities"] == [nested["probabilities"]]

    # a JPEG of another size: what Pillow decodes and resizes (bilinear) to 32x32, as nested lists
    photo = np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    resized = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").resize((32, 32), Image.BILINEAR))
    jpeg = predict(server, {"instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}]})["predictions"][0]
    assert jpeg == predict(server, {"instances": [resized.tolist()]})["predictions"][0]

    # grey and RGBA files become RGB: the grey channel three times, the colour channels
    grey = IMAGES[1][..., 0]
    assert predict(server, {"instances": [{"b64": png(grey, "L")}]})["predictions"][0] == \
        predict(server, {"instances": [np.stack([grey] * 3, -1).tolist()]})["predictions"][0]
    rgba = np.concatenate([IMAGES[2], np.full((32, 32, 1), 255, np.uint8)], -1)
    assert predict(server, {"instances": [{"b64": png(rgba, "RGBA")}]})["predictions"][0] == \
        predict(server, {"instances": [IMAGES[2].tolist()]})["predictions"][0]


GOOD = {"instances": [IMAGES[0].tolist()]}
PREDICT = "/v1/models/model:predict"


def _with_text(image):
    nested = image.tolist()
    nested[3][4][1] = "12"
    return nested


def _with_token(image, token):
    """A request body of one image with `token` (JSON text, such as NaN, which Python's json reads) for one value."""
    nested = image.tolist()
    nested[3][4][1] = "PIXEL"
    return json.dumps({"instances": [nested]}).replace('"PIXEL"', token).encode()


def png_header(width, height):
    """A PNG file's signature, IHDR and IEND: Pillow's open reads its size; its pixels cannot be decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")).decode()


NON_FINITE = r"^Failed to process element: 0 of 'instances' list: it holds NaN or infinite values .*; pixel values " \
    r"must be finite numbers 0-255$"


# (name, method, path, body, status, what the error says)
BAD_REQUESTS = [
    ("malformed JSON", "POST", PREDICT, b'{"instances": [[1, 2', 400, r"^JSON Parse error: .+ at offset: \d+$"),
    ("empty body", "POST", PREDICT, b"", 400, r"^JSON Parse error: The document is empty$"),
    ("body that is not an object", "POST", PREDICT, [[1, 2]], 400, r"^JSON Value: \[\[1, 2\]\] Is not object"),
    ("neither instances nor inputs", "POST", PREDICT, {"examples": [1]}, 400, r"^Missing 'inputs' or 'instances' key$"),
    ("both instances and inputs", "POST", PREDICT, {"instances": GOOD["instances"], "inputs": GOOD["instances"]}, 400,
     r"^Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist$"),
    ("instances that are not a list", "POST", PREDICT, {"instances": 3}, 400, r"'instances' to be an list/array"),
    ("no instances", "POST", PREDICT, {"instances": []}, 400, r"^No values in 'instances' array$"),
    ("wrong image size", "POST", PREDICT, {"instances": [np.zeros((30, 32, 3)).tolist()]}, 400,
     r"element: 0 of 'instances'.*shape \(30, 32, 3\), but the model takes images of shape \(32, 32, 3\)"),
    ("wrong channel count", "POST", PREDICT, {"instances": [np.zeros((32, 32, 4)).tolist()]}, 400,
     r"shape \(32, 32, 4\), but the model takes images of shape \(32, 32, 3\)"),
    ("wrong image size, columnar", "POST", PREDICT, {"inputs": np.zeros((2, 32, 31, 3)).tolist()}, 400,
     r"element: 0 of 'inputs'.*shape \(32, 31, 3\).*\(32, 32, 3\)"),
    ("text where numbers belong", "POST", PREDICT, {"instances": [_with_text(IMAGES[0])]}, 400,
     r"text, true/false, null or objects where numbers belong"),
    ("ragged lists", "POST", PREDICT, {"instances": [IMAGES[0].tolist()[:31] + [IMAGES[0][0, :5].tolist()]]}, 400,
     r"element: 0 of 'instances' list: its nested lists are ragged"),
    ("base64 that is not an image", "POST", PREDICT,
     {"instances": [{"b64": base64.b64encode(b"GIF89a, or rather not").decode()}]}, 400,
     r"its b64 bytes are not an image Pillow can read"),
    ("base64 that does not decode", "POST", PREDICT, {"instances": [{"b64": "abcde"}]}, 400,
     r"Unable to base64 decode"),
    ("an instance of other keys", "POST", PREDICT, {"instances": [{"pixels": [1]}]}, 400,
     r"keys must be equal to: image"),
    ("unknown signature", "POST", PREDICT, {"signature_name": "serving_uint8", **GOOD}, 400,
     r'^Serving signature name: "serving_uint8" not found in signature def; this model has "serving_default" only$'),
    ("body over the size limit", "POST", PREDICT, b" " * (33 * 2**20), 413,
     r"^The request body has 33\.0 MB, over this server's limit of 32 MB \(--max-body-mb\)"),
    ("a NaN pixel", "POST", PREDICT, _with_token(IMAGES[0], "NaN"), 400, NON_FINITE),
    ("an infinite pixel", "POST", PREDICT, _with_token(IMAGES[0], "Infinity"), 400, NON_FINITE),
    ("a minus-infinite pixel", "POST", PREDICT, _with_token(IMAGES[0], "-Infinity"), 400, NON_FINITE),
    ("a pixel of 1e400, infinite as a float", "POST", PREDICT, _with_token(IMAGES[0], "1e400"), 400, NON_FINITE),
    ("a pixel over 255", "POST", PREDICT, _with_token(IMAGES[0], "300.5"), 400,
     r"element: 0 of 'instances' list: it holds values from 0 to 300\.5; pixel values must be finite numbers 0-255"),
    ("a negative pixel", "POST", PREDICT, {"inputs": [np.full((32, 32, 3), -1).tolist()]}, 400,
     r"element: 0 of 'inputs': it holds values from -1 to -1; pixel values must be finite numbers 0-255"),
    ("images over the pixel budget of a request, refused from their headers", "POST", PREDICT,
     {"instances": [{"b64": png_header(8000, 6000)}] * 3}, 413,
     r"^The request's images hold 144,000,000 pixels together, over this server's limit of 134,217,728 a request; "),
    ("more images than a request may hold", "POST", PREDICT, {"instances": [{"b64": png(IMAGES[0, :1, :1])}] * 257},
     413, r"^The request holds 257 images, over this server's limit of 256 a request; send them in several"),
    ("unknown model name", "POST", "/v1/models/resnet:predict", GOOD, 404,
     r"^Servable not found for request: Latest\(resnet\)$"),
    ("unknown version", "POST", "/v1/models/model/versions/2:predict", GOOD, 404,
     r"^Servable not found for request: Specific\(model, 2\)$"),
    ("status of an unknown model", "GET", "/v1/models/resnet", None, 404,
     r"^Could not find any versions of model resnet$"),
    ("status of an unknown version", "GET", "/v1/models/model/versions/7", None, 404,
     r"^Could not find version 7 of model model$"),
    ("metadata of an unknown model", "GET", "/v1/models/resnet/metadata", None, 404,
     r"^Servable not found for request: Latest\(resnet\)$"),
    ("unknown path", "GET", "/v2/models/model", None, 404,
     r"^Malformed request: GET /v2/models/model; this server answers .*POST /v1/models/model:predict$"),
    ("predict with GET", "GET", PREDICT, None, 405, r"^Malformed request: GET /v1/models/model:predict; .*POST only$"),
    ("metadata with POST", "POST", "/v1/models/model/metadata", GOOD, 405, r"this path answers GET only$"),
]


@pytest.mark.parametrize("method, path, body, status, message", [row[1:] for row in BAD_REQUESTS],
                         ids=[row[0] for row in BAD_REQUESTS])
def test_bad_requests_get_tensorflow_servings_error_then_the_server_goes_on(server, method, path, body, status,
                                                                            message):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body)
    response = requests.request(method, server.url + path, data=data, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert set(error) == {"error"}
    assert "\n" not in error["error"] and "Traceback" not in error["error"], error
    assert re.search(message, error["error"]), error["error"]
    assert predict(server, GOOD)["predictions"][0]["class_name"] in CLASSES


def test_the_page_has_its_hooks_and_no_external_resource(server):
    response = requests.get(server.url + "/", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for hook in ('id="file"', 'id="drop"', 'id="preview"', 'id="status" data-state="idle"', 'id="error"',
                 'id="top5"', '"prediction"', '"class-name"', '"probability"', '/v1/models/'):
        assert hook in page, hook
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no CDN: it works offline
    settings = json.loads(re.search(r'<script id="settings" type="application/json">(.*?)</script>', page).group(1))
    assert settings == {"model": "model", "height": 32, "width": 32, "channels": 3, "class_names": CLASSES}


def test_concurrent_clients_get_their_own_answers(server):
    """16 clients x 6 requests of one image each, on the loopback: every answer is the one its image gets alone,
    so batching (which happens here) mixes no rows up."""
    alone = [predict(server, {"instances": [image.tolist()]})["predictions"][0] for image in IMAGES]
    bodies = [json.dumps({"instances": [image.tolist()]}) for image in IMAGES]

    def client(number):
        results = []
        with requests.Session() as session:
            for request in range(6):
                k = (number + request) % len(IMAGES)
                response = session.post(server.url + PREDICT, data=bodies[k], timeout=30)
                results.append((k, response.status_code, response.json(), int(response.headers["X-Kcnn-Batch"])))
        return results

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = [result for results in pool.map(client, range(16)) for result in results]
    elapsed = time.monotonic() - started
    assert len(results) == 96 and [status for _, status, _, _ in results] == [200] * 96
    assert all(answer["predictions"] == [alone[k]] for k, _, answer, _ in results)
    assert max(batch for _, _, _, batch in results) > 1, "no request was batched with another"
    assert elapsed < 10, f"96 requests took {elapsed:.1f} s"


def test_keep_alive_requests_do_not_wait_for_delayed_acks(server):
    """TCP_NODELAY on the server's connections: without it each request on a kept-alive connection waited 40 ms
    (Nagle's algorithm against the client's delayed ACK), 1-2 ms with it."""
    with requests.Session() as session:
        session.get(server.url + "/v1/models/model", timeout=30)
        times = []
        for _ in range(15):
            started = time.perf_counter()
            session.post(server.url + PREDICT, data=json.dumps(GOOD), timeout=30)
            times.append(time.perf_counter() - started)
    # every request waited at least the 40 ms of Linux's delayed ACK without it: the fastest of 15 tells, however
    # busy the machine is (a median would count the requests a loaded machine kept waiting for other reasons)
    assert min(times) < 0.030, f"fastest {min(times) * 1e3:.0f} ms, median {np.median(times) * 1e3:.0f} ms"


def test_the_serving_process_loads_no_tensorflow_keras_or_jax(server):
    maps = f"/proc/{server.process.pid}/maps"  # the same process: `kcnn serve` became the server (exec)
    if not os.path.exists(maps):  # Linux's /proc: CI and the project machines have it; macOS does not
        pytest.skip("no /proc here")
    libraries = open(maps).read()
    assert "onnxruntime" in libraries
    for name in ("tensorflow", "jaxlib", "libtorch"):
        assert name not in libraries, name


# ---- other sources, SIGTERM, the command line's refusals ----------------------------------------------------------


def _in_flight(port, body):
    """A predict request in flight: its headers sent with `Expect: 100-continue`, and the server's `100 Continue`
    received, which it sends once the application reads the body."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    reply = b""
    while not reply.endswith(b"\r\n\r\n"):
        reply += connection.recv(1)
    assert reply.startswith(b"HTTP/1.1 100 "), reply
    return connection


def _finish(connection, body):
    connection.sendall(body)
    reply = b""
    while chunk := connection.recv(65536):  # the server closes the connection: it is shutting down
        reply += chunk
    connection.close()
    head, _, content = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(server, onnx_session, tmp_path):
    """An ONNX export folder (model.onnx and class_names.txt) served; three requests in flight when SIGTERM comes
    (the server waiting for their bodies): it stops accepting, answers all three in full, then ends with 0."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("model.onnx", "class_names.txt"):
        shutil.copy(os.path.join(os.path.dirname(server.onnx), name), folder / name)
    served = Server(serving_process(folder, "--port", 0), timeout=60)
    bodies = [json.dumps({"instances": IMAGES[k:k + 2].tolist()}).encode() for k in range(3)]
    connections = [_in_flight(served.port, body) for body in bodies]
    served.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # new connections are refused while the three wait
        try:
            socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "still accepting connections 5 s after SIGTERM"
        time.sleep(0.05)
    assert served.process.poll() is None
    for k, (connection, body) in enumerate(zip(connections, bodies)):
        status, answer = _finish(connection, body)
        expected = onnx_session.run(["probabilities"], {"image": IMAGES[k:k + 2].astype("float32")})[0]
        assert status == 200, answer
        np.testing.assert_array_equal(np.array([p["probabilities"] for p in answer["predictions"]], np.float32),
                                      expected)
        assert [p["class_name"] for p in answer["predictions"]] == [CLASSES[i] for i in expected.argmax(-1)]
    assert served.process.wait(timeout=30) == 0, served.output
    served.reader.join(5)
    assert "kcnn serve: stopped" in served.output and "Traceback" not in served.output, served.output


def test_a_model_onnx_file_under_another_name_without_batching(server, tmp_path):
    """A bare model.onnx (its class names from the file's metadata), --model-name pets, --max-batch 1: concurrent
    requests are answered one run each."""
    shutil.copy(server.onnx, tmp_path / "model.onnx")
    served = Server(serving_process(tmp_path / "model.onnx", "--port", 0, "--model-name", "pets", "--max-batch", 1),
                    timeout=60)
    try:
        assert requests.get(served.url + "/v1/models/pets", timeout=30).json() == STATUS
        assert requests.get(served.url + "/v1/models/model", timeout=30).status_code == 404
        expected = predict(server, {"instances": IMAGES.tolist()})["predictions"]

        def one(k):
            response = requests.post(served.url + "/v1/models/pets:predict",
                                     json={"instances": [IMAGES[k].tolist()]}, timeout=30)
            return response.json()["predictions"][0], response.headers["X-Kcnn-Batch"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(8)))
        assert [answer for answer, _ in answers] == expected
        assert {batch for _, batch in answers} == {"1"}
    finally:
        assert served.stop() == 0, served.output


def test_refusals_of_the_serving_process_are_one_line_and_exit_2(tmp_path):
    """An .onnx file onnxruntime cannot load, a model that diverged (NaN on a plain image), flags out of range (NaN
    and infinity included), a missing file: `kcnn: error: ...` and 2, no traceback."""
    (tmp_path / "model.onnx").write_bytes(b"not an ONNX model")
    diverged = tiny_onnx(tmp_path / "diverged" / "model.onnx", -1)  # NaN for every image
    for args, message in [((tmp_path / "model.onnx", "--port", 0), r"model\.onnx cannot be loaded by onnxruntime"),
                          ((diverged, "--port", 0), r"model\.onnx gives NaN or infinite outputs on a plain grey image: "
                           r"the model diverged in training; retrain it with a lower learning rate\."),
                          ((tmp_path / "model.onnx", "--max-batch", 0), r"max_batch must be a whole number"),
                          ((tmp_path / "model.onnx", "--max-body-mb", "inf"),
                           r"max_body_mb must be a number of megabytes above 0 and at most 4096\. .*=inf"),
                          ((tmp_path / "model.onnx", "--max-body-mb", "nan"), r"max_body_mb must be .*=nan"),
                          ((tmp_path / "model.onnx", "--max-body-mb", "1e9"), r"max_body_mb must be .*=1000000000\.0"),
                          ((tmp_path / "model.onnx", "--body-timeout-s", "nan"),
                           r"body_timeout_s must be a number of seconds above 0 and at most 3600\. .*=nan"),
                          ((tmp_path / "model.onnx", "--shutdown-timeout-s", "inf"),
                           r"shutdown_timeout_s must be .*=inf"),
                          ((tmp_path / "nothing", "--port", 0), r"No such file or directory")]:
        done = subprocess.run(serving_process(*args), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert re.fullmatch(rf"kcnn: error: [^\n]*{message}[^\n]*\n", done.stderr), done.stderr


def test_the_serving_process_imports_this_kcnn_not_an_installed_one():
    """server_command's bare `kcnn` package has kcnn's folder as its path: with a folder beside it, an editable
    install's finder (or nothing, in a wheel) would give `kcnn.deploy` from elsewhere."""
    executable, flag, bootstrap = kcnn_serve.server_command()
    probe = bootstrap.replace("from kcnn.deploy.serve import main; sys.exit(main())",
                              "import kcnn.deploy.serve; print(kcnn.deploy.serve.__file__)")
    assert probe != bootstrap
    done = subprocess.run([executable, flag, probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == os.path.abspath(kcnn_serve.__file__), done.stdout + done.stderr


def test_a_port_in_use_is_refused(server, tmp_path):
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        done = subprocess.run(serving_process(server.onnx, "--port", busy.getsockname()[1]), capture_output=True,
                              text=True, timeout=60)
    finally:
        busy.close()
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"kcnn: error: Port \d+ of 127\.0\.0\.1 is in use by another program; pass another --port "
                        r"\(0: any free port\)\.\n", done.stderr), done.stderr


def test_which_model_a_source_names(tmp_path):
    """A run's export/model.onnx is served unless model.keras is newer (then converted afresh); a folder with
    model.onnx is an export; a .keras or .onnx file is itself."""
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "model.keras").write_bytes(b"k")
    (run / "export" / "model.onnx").write_bytes(b"o")
    os.utime(run / "model.keras", (1000, 1000))
    assert kcnn_serve.find_source(run) == (str(run / "export" / "model.onnx"), None)
    os.utime(run / "model.keras", (3e9, 3e9))
    assert kcnn_serve.find_source(run) == (None, str(run / "model.keras"))
    assert kcnn_serve.find_source(run / "export") == (str(run / "export" / "model.onnx"), None)
    assert kcnn_serve.find_source(str(run / "model.keras")) == (None, str(run / "model.keras"))
    with pytest.raises(kcnn_serve.ServeError, match=r"holds no model\.onnx, export/model\.onnx or model\.keras"):
        kcnn_serve.find_source(tmp_path)


# ---- the limits: bodies too large, too slow or cut off, idle connections, SIGTERM with slow clients, NaN ---------


def tiny_onnx(path, constant):
    """A kcnn-like ONNX model of 32x32x3 images and 3 classes, in milliseconds: probabilities = sqrt(constant - the
    mean of each channel), NaN where a channel's mean is over `constant`; class_names.txt beside it."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("Sub", ["constant", "mean"], ["difference"]),
             helper.make_node("Sqrt", ["difference"], ["probabilities"]),
             helper.make_node("ArgMax", ["probabilities"], ["class_index"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("class_index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor("constant", TensorProto.FLOAT, [], [constant])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime 1.18, the oldest pyproject.toml allows, reads
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    (path.parent / "class_names.txt").write_text("red\ngreen\nblue\n")
    return path


def tiny_answer(images, constant=200.0):
    return np.sqrt(constant - images.astype(np.float32).mean(axis=(1, 2)))


def _connect(server):
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def _head(length):
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _kept_alive(server):
    """A connection that has had one answer in full, and is kept alive."""
    connection = _connect(server)
    connection.sendall(b"GET /v1/models/model HTTP/1.1\r\nHost: localhost\r\n\r\n")
    reply = b""
    while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < len(json.dumps(STATUS)):
        reply += connection.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in reply.lower(), reply
    return connection


def _read_to_close(connection):
    """Everything the server sends until it closes the connection, and how long that took."""
    started, reply = time.monotonic(), b""
    while chunk := connection.recv(65536):
        reply += chunk
    connection.close()
    return reply, time.monotonic() - started


def _answer(reply):
    head, _, content = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode().lower(), json.loads(content)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A serving process of the tiny model (NaN for images brighter than 200 on average) with a body limit of 1 MB,
    a body timeout of 1.5 s and batches of 2 images; SIGTERM must end it with 0 and no traceback."""
    path = tiny_onnx(tmp_path_factory.mktemp("tiny") / "model.onnx", 200)
    served = Server(serving_process(path, "--port", 0, "--max-body-mb", 1, "--body-timeout-s", 1.5, "--max-batch", 2),
                    timeout=60)
    yield served
    assert served.stop() == 0, served.output
    assert "kcnn serve: stopped" in served.output and "Traceback" not in served.output, served.output


def test_a_model_giving_nan_answers_500_with_strict_json_and_requests_run_in_parts_of_max_batch(tiny):
    """NaN is not JSON: the request whose image makes the model give NaN gets 500 and TF Serving's error; the
    others, 5 images in runs of at most --max-batch 2, their answers."""
    def strict(text):
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in the body: not JSON"))

    white = np.full((1, *SHAPE), 255, np.uint8)
    response = requests.post(tiny.url + PREDICT, data=json.dumps({"instances": white.tolist()}), timeout=30)
    assert response.status_code == 500, response.text
    assert re.fullmatch(r"Internal error: the model gave NaN or infinite probabilities for these images, which JSON "
                        r"cannot hold; .*lower learning rate\)", strict(response.text)["error"]), response.text

    images = IMAGES[:5] // 2  # means under 200: finite
    response = requests.post(tiny.url + PREDICT, data=json.dumps({"instances": images.tolist()}), timeout=30)
    assert response.status_code == 200, response.text
    rows = strict(response.text)["predictions"]
    np.testing.assert_allclose(np.array([row["probabilities"] for row in rows]), tiny_answer(images), rtol=1e-6)
    assert [row["class_name"] for row in rows] == [["red", "green", "blue"][i] for i in
                                                    tiny_answer(images).argmax(-1)]


def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent_and_the_connection_closed(tiny):
    """Content-Length of a terabyte and 10 bytes sent: the 413 comes at once (not after the 1.5 s body timeout,
    and without reading the rest), then the server closes the connection."""
    connection = _connect(tiny)
    connection.sendall(_head(10**12) + b'{"instance')
    reply, elapsed = _read_to_close(connection)
    status, head, answer = _answer(reply)
    assert status == 413 and "connection: close" in head, reply
    assert re.fullmatch(r"The request body has 953674\.3 MB, over this server's limit of 1 MB \(--max-body-mb\); .*",
                        answer["error"]), answer
    assert elapsed < 1.0, f"the 413 and the close took {elapsed:.2f} s"


def test_a_chunked_body_over_the_limit_gets_413_as_it_arrives(tiny):
    sent = []

    def chunks():  # 4 MB in 64 KB chunks; the server stops reading after 1 MB
        for _ in range(64):
            sent.append(1)
            yield b" " * 65536

    response = requests.post(tiny.url + PREDICT, data=chunks(), timeout=30)
    assert response.status_code == 413 and response.headers["connection"] == "close", response.text
    assert re.match(r"^The request body is over this server's limit of 1 MB \(--max-body-mb\)",
                    response.json()["error"])


def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closed(tiny):
    """Half a body, then nothing: 408 after --body-timeout-s (1.5 s); a body sent a byte at a time is no better."""
    connection = _connect(tiny)
    body = json.dumps({"instances": IMAGES[:1].tolist()}).encode()
    connection.sendall(_head(len(body)) + body[:len(body) // 2])
    reply, elapsed = _read_to_close(connection)
    status, head, answer = _answer(reply)
    assert status == 408 and "connection: close" in head, reply
    assert re.fullmatch(r"The request body did not all arrive within 1\.5 s of its headers \(--body-timeout-s\), .*",
                        answer["error"]), answer
    assert 1.0 < elapsed < 4, elapsed

    connection = _connect(tiny)
    connection.sendall(_head(len(body)))
    started, status = time.monotonic(), None
    for byte in body:  # a byte every 0.1 s: it would take minutes
        try:
            connection.sendall(bytes([byte]))
        except OSError:  # closed by the server
            break
        time.sleep(0.1)
        assert time.monotonic() - started < 10, "still reading the trickle after 10 s"
    reply, _ = _read_to_close(connection)
    assert _answer(reply)[0] == 408, reply


def test_idle_and_half_sent_connections_are_closed_after_keep_alive_s(tiny):
    """A keep-alive connection after its answer, one that sent nothing and one that sent half a request line: all
    closed after KEEP_ALIVE_S (uvicorn alone would keep the last two for ever)."""
    idle = _kept_alive(tiny)
    silent, half = _connect(tiny), _connect(tiny)
    half.sendall(b"POST /v1/models/mo")
    for connection in (idle, silent, half):
        reply, elapsed = _read_to_close(connection)
        assert reply == b"" and elapsed < kcnn_serve.KEEP_ALIVE_S + 3, (reply, elapsed)


def test_a_client_gone_mid_body_is_one_line_in_the_log(tiny):
    connection = _connect(tiny)
    connection.sendall(_head(1000) + b'{"instances": [[[1, 2, 3]')
    time.sleep(0.3)
    connection.close()
    line = "kcnn serve: a client disconnected before its request was complete\n"
    deadline = time.monotonic() + 10
    while line not in tiny.lines:
        assert time.monotonic() < deadline, tiny.output
        time.sleep(0.05)
    time.sleep(0.3)
    assert tiny.lines.count(line) == 1 and "Traceback" not in tiny.output, tiny.output
    assert predict(tiny, {"instances": IMAGES[:1].tolist()})["predictions"][0]["class_name"] in ("red", "green", "blue")


def test_sigterm_exits_0_within_the_shutdown_timeout_whatever_slow_and_idle_clients_do(tmp_path):
    """--shutdown-timeout-s 2 (the body timeout left at 30 s): an idle keep-alive connection, one that sent half a
    request line and one that sent half a body when SIGTERM comes; the first two are closed at once, the third
    gets 408 after 2 s, and the process exits with 0."""
    path = tiny_onnx(tmp_path / "model.onnx", 200)
    served = Server(serving_process(path, "--port", 0, "--shutdown-timeout-s", 2), timeout=60)
    idle = _kept_alive(served)
    half = _connect(served)
    half.sendall(b"POST /v1/models/mo")
    slow = _connect(served)
    slow.sendall(_head(1000) + b'{"instances": [[[1, 2, 3]')
    time.sleep(0.3)  # the slow request in flight
    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    for connection in (idle, half):
        reply, elapsed = _read_to_close(connection)
        assert reply == b"" and elapsed < 1.5, (reply, elapsed)
    reply, elapsed = _read_to_close(slow)
    assert _answer(reply)[0] == 408 and 1.5 < elapsed < 4, (reply, elapsed)
    assert served.process.wait(timeout=30) == 0, served.output
    elapsed = time.monotonic() - started
    served.reader.join(5)
    assert elapsed < 2 + 2, f"exited {elapsed:.1f} s after SIGTERM"
    assert "kcnn serve: stopped" in served.output and "Traceback" not in served.output, served.output
