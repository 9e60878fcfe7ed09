"""`kcnn serve`: a local server that answers TensorFlow Serving's REST API, with inference on onnxruntime.

    kcnn serve saved_models/my_run                    # a run directory (converted to ONNX first if it has none)
    kcnn serve saved_models/my_run/export             # an ONNX export folder (kcnn export RUN --format onnx)
    kcnn serve model.onnx --model-name pets --port 8080

Client code written for TensorFlow Serving works unchanged (NAME: --model-name, "model" by default, as in
TF Serving's docker image; the one version is 1):

    GET  /v1/models/NAME[/versions/1]             the version's status: AVAILABLE
    GET  /v1/models/NAME[/versions/1]/metadata    the signature serving_default: input `image`, its shape and dtype,
                                                  outputs `probabilities`, `class_index`, `class_name`
    POST /v1/models/NAME[/versions/1]:predict     {"instances": [...]} -> {"predictions": [{...}, ...]} (row format),
                                                  {"inputs": [...]} -> {"outputs": {...}} (columnar)
    GET  /                                        a page: drop an image, see the top-5 classes

An image is nested lists (height, width, channels) of raw 0-255 pixels, `{"image": <that>}`, or `{"b64": "..."}`
holding PNG or JPEG bytes, which the server decodes and resizes to the model's input (Pillow, bilinear, as kcnn
predict does). Pixel values must be finite numbers 0-255 (JSON's NaN, Infinity and 1e400, which Python reads, are
refused). Errors are TF Serving's: `{"error": "<one sentence>"}` with a 4xx status (500 where the model gives
NaN or infinite probabilities, which JSON cannot hold; every body is strict JSON).

Limits, so that no client can hold the server open or make it run out of memory:

    413  a body over --max-body-mb (32 MB): refused from its Content-Length before a byte of it is read, or as it
         arrives when chunked; the connection is then closed
    413  over MAX_INSTANCES (256) images in one request, or over MAX_REQUEST_PIXELS (128 Mi) pixels together,
         counted from nested lists' lengths and b64 files' headers before any image is decoded (and MAX_PIXELS,
         64 Mi, for one image)
    408  a body not all arrived within --body-timeout-s (30 s) of its request's headers; the connection is closed
    a connection with no request in progress (idle after a response, or whose request's headers have not all
    arrived) is closed after KEEP_ALIVE_S (5 s)
    PARSING_AT_ONCE (2) requests are parsed and decoded at a time: the largest take about 0.55 GB each

The model runs on at most --max-batch images at a time, however many a request holds. A client that goes away
before its body is complete is one line in the log. At start the model is run on a black and a grey image: one
that gives NaN or infinite outputs (training diverged) is refused.

SIGTERM (or Ctrl-C): the server stops accepting connections, closes the idle ones, answers the requests in flight
and exits with 0. A body still arriving then has --shutdown-timeout-s (10 s) at most before its 408, so the
process exits within that (and SHUTDOWN_RUN_S more for the model runs then under way, after which uvicorn cancels
them), whatever idle or slow clients do.

Library: Starlette on uvicorn. Both are small, pure Python, widely used and maintained by the same people
(Kludex, encode); Starlette gives routing, requests and responses and nothing else, and uvicorn's handling of
SIGTERM is what a server needs: stop accepting, let the requests in flight finish, then return. aiohttp would do
too, but brings five compiled dependencies; these two add nothing else (the anyio, h11 and click they need were
installed already).

The serving process imports neither TensorFlow nor Keras: `import kcnn` does (6 s, a few hundred MB), so
`kcnn serve` checks its arguments, converts a Keras model to ONNX when SOURCE has none (kcnn.deploy.export, into a
temporary folder removed at exit), then replaces itself (exec) with a fresh interpreter that loads this module
alone (`server_command`).

Batching: requests wait in one queue; one task takes whatever is waiting (up to --max-batch images), runs one
session.run in a worker thread and hands each request its rows. Nothing waits for a batch to fill: a request
alone runs at once, and those that arrive while a run is busy go together in the next. --max-batch 1 turns
batching off (one run per request, in order of arrival).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import Any, Sequence

import numpy as np

from kcnn.data.folder import CorruptImageError, ImageTooLargeError, read_image
from kcnn.deploy.serve_flags import (BODY_TIMEOUT_S, HOST, MAX_BATCH, MAX_BODY_MB, MAX_BODY_MB_LIMIT, MAX_TIMEOUT_S,
                                     MODEL_NAME, PORT, SHUTDOWN_S, add_arguments)
from kcnn.errors import KcnnError

MAX_PIXELS = 64 * 1024 * 1024  # a b64 image larger than this is refused before decoding (as kcnn.data.folder)
MAX_REQUEST_PIXELS = 128 * 1024 * 1024  # the pixels of one request's images together (decoding them is the CPU time)
MAX_INSTANCES = 256  # images in one request: each becomes the model's input, float32, however small its file
# (256 1x1 PNGs, a 30 kB body, make 154 MB for a 224x224 model; 32 MB of them would make 180 GB)
KEEP_ALIVE_S = 5  # a connection with no request in progress is closed after this (uvicorn's keep-alive default)
SHUTDOWN_RUN_S = 5  # ... and the model runs then under way this much more, after which uvicorn cancels them
PARSING_AT_ONCE = 2  # requests parsed and decoded at once: up to 0.55 GB each (bench/serve_limits.py), and JSON
# parsing holds the GIL, so more at once would take more memory, not less time
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
SIGNATURE = "serving_default"
VERSION = 1
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")
SOURCES = "pass a run directory, an ONNX export folder (kcnn export RUN --format onnx) or a model.onnx file"


class ServeError(KcnnError):
    """A SOURCE that cannot be served, or a setting out of range (kcnn serve)."""


class RequestError(Exception):
    """A request answered with TensorFlow Serving's {"error": message} and a 4xx status (500: a model giving NaN);
    `close`: then the connection is closed (a body left unread)."""

    def __init__(self, message, status=400, close=False):
        super().__init__(message)
        self.status, self.close = status, close


# ---- the command: settings, SOURCE, conversion, the serving process --------------------------------------------


def start(source: str, *, model_name: str = MODEL_NAME, host: str = HOST, port: int = PORT,
          max_body_mb: float = MAX_BODY_MB, max_batch: int = MAX_BATCH, body_timeout_s: float = BODY_TIMEOUT_S,
          shutdown_timeout_s: float = SHUTDOWN_S) -> int:
    """`kcnn serve`: check the settings and SOURCE, convert a Keras model to ONNX if SOURCE has no ONNX file,
    then become the serving process (exec; on other systems than POSIX, serve here). Returns the exit code."""
    check_settings(model_name, port, max_body_mb, max_batch, body_timeout_s=body_timeout_s,
                   shutdown_timeout_s=shutdown_timeout_s)
    onnx_path, keras_path = find_source(source)
    temporary = None
    if onnx_path is None:
        onnx_path, temporary = convert(keras_path)
    argv = [onnx_path, "--model-name", model_name, "--host", host, "--port", str(port),
            "--max-body-mb", str(max_body_mb), "--max-batch", str(max_batch),
            "--body-timeout-s", str(body_timeout_s), "--shutdown-timeout-s", str(shutdown_timeout_s)]
    argv += ["--remove-at-exit", temporary] if temporary else []
    if os.name != "posix":
        return main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [*server_command(), *argv])


def server_command() -> list[str]:
    """The command line of a serving process, to which SOURCE and the flags are added: this module alone, without
    running kcnn's package __init__ (which imports Keras): a bare `kcnn` package whose path is kcnn's folder."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # kcnn/, above kcnn/deploy/
    bootstrap = ("import sys, types; kcnn = types.ModuleType('kcnn'); kcnn.__path__ = [%r]; sys.modules['kcnn'] = "
                 "kcnn; from kcnn.deploy.serve import main; sys.exit(main())" % folder)
    return [sys.executable, "-c", bootstrap]


def main(argv: Sequence[str] | None = None) -> int:
    """The serving process: SOURCE holds an ONNX model; on bad input, one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="kcnn serve")
    add_arguments(parser)
    parser.add_argument("--remove-at-exit", help=argparse.SUPPRESS)  # the temporary folder of a conversion
    args = parser.parse_args(argv)
    try:
        settings = {"max_body_mb": args.max_body_mb, "max_batch": args.max_batch,
                    "body_timeout_s": args.body_timeout_s, "shutdown_timeout_s": args.shutdown_timeout_s}
        check_settings(args.model_name, args.port, **settings)
        onnx_path, keras_path = find_source(args.source)
        if onnx_path is None:
            raise ServeError(f"{args.source} holds a Keras model and no ONNX one: serve it with `kcnn serve`, which "
                             f"converts it, or convert it with `kcnn export {args.source} --format onnx`.")
        serve(onnx_path, model_name=args.model_name, host=args.host, port=args.port, **settings)
    except KcnnError as error:
        print(f"kcnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the server started (then uvicorn handles it)
        return 130
    finally:
        if args.remove_at_exit:
            shutil.rmtree(args.remove_at_exit, ignore_errors=True)
    return 0


def check_settings(model_name: str, port: int, max_body_mb: float, max_batch: int, *,
                   body_timeout_s: float = BODY_TIMEOUT_S, shutdown_timeout_s: float = SHUTDOWN_S) -> None:
    if not isinstance(model_name, str) or not re.fullmatch(r"[^/:\s]+", model_name):
        raise ServeError(f"The model name goes into the URL /v1/models/NAME: it needs at least one character and "
                         f"no '/', ':' or spaces. Received: model_name={model_name!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"port must be a whole number from 0 (any free port) to 65535. Received: port={port!r}")
    if not _number_in(max_body_mb, MAX_BODY_MB_LIMIT):
        raise ServeError(f"max_body_mb must be a number of megabytes above 0 and at most {MAX_BODY_MB_LIMIT}. "
                         f"Received: max_body_mb={max_body_mb!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ServeError(f"max_batch must be a whole number of at least 1 (1: no batching). "
                         f"Received: max_batch={max_batch!r}")
    for name, value in (("body_timeout_s", body_timeout_s), ("shutdown_timeout_s", shutdown_timeout_s)):
        if not _number_in(value, MAX_TIMEOUT_S):
            raise ServeError(f"{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT_S}. "
                             f"Received: {name}={value!r}")


def _number_in(value, most):
    """A number above 0 and at most `most`: not NaN, not infinite (argparse's float() reads "nan" and "inf")."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and 0 < value <= most)


def find_source(source: str) -> tuple[str | None, str | None]:
    """(model.onnx to serve, None) or (None, the .keras file to convert first) of a SOURCE: a model.onnx file, a
    folder holding model.onnx, a run directory with or without export/model.onnx, or a .keras file. A run's
    export older than its model.keras is not served: the model is converted afresh."""
    source = os.fspath(source)
    if os.path.isfile(source):
        if source.endswith((".onnx", ".keras")):
            return (source, None) if source.endswith(".onnx") else (None, source)
        raise ServeError(f"{source} is neither an ONNX model (.onnx) nor a Keras model (.keras); {SOURCES}.")
    if not os.path.isdir(source):
        raise ServeError(f"No such file or directory: {source!r}; {SOURCES}.")
    keras_path = os.path.join(source, "model.keras")
    for onnx_path in (os.path.join(source, "model.onnx"), os.path.join(source, "export", "model.onnx")):
        if os.path.isfile(onnx_path) and not (os.path.isfile(keras_path)
                                              and os.path.getmtime(keras_path) > os.path.getmtime(onnx_path)):
            return onnx_path, None
    if os.path.isfile(keras_path):
        return None, keras_path
    raise ServeError(f"{source} holds no model.onnx, export/model.onnx or model.keras; {SOURCES}.")


def convert(keras_path: str) -> tuple[str, str]:
    """(model.onnx, the temporary folder holding it) of a .keras file (kcnn.deploy.export: a TensorFlow child process
    where another backend is active). The serving process removes the folder when it ends."""
    from kcnn.deploy.export import export

    folder = tempfile.mkdtemp(prefix="kcnn-serve-")
    print(f"kcnn serve: converting {keras_path} to ONNX for onnxruntime (20-40 s), into a temporary folder removed "
          f"at exit (`kcnn export {os.path.dirname(keras_path) or '.'} --format onnx` would keep it)", flush=True)
    try:
        return export(keras_path, "onnx", os.path.join(folder, "onnx"), verbose=False), folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def serve(onnx_path: str, *, model_name: str = MODEL_NAME, host: str = HOST, port: int = PORT,
          max_body_mb: float = MAX_BODY_MB, max_batch: int = MAX_BATCH, body_timeout_s: float = BODY_TIMEOUT_S,
          shutdown_timeout_s: float = SHUTDOWN_S) -> None:
    """Serve `onnx_path` in this process until SIGTERM or Ctrl-C; the requests in flight finish first (bodies still
    arriving within `shutdown_timeout_s`)."""
    import uvicorn

    check_settings(model_name, port, max_body_mb, max_batch, body_timeout_s=body_timeout_s,
                   shutdown_timeout_s=shutdown_timeout_s)
    model = Model(onnx_path, model_name)
    listener = _listen(host, port)
    app = make_app(model, max_body_mb=max_body_mb, max_batch=max_batch, body_timeout_s=body_timeout_s)
    address = f"[{host}]" if ":" in host else host
    url = f"http://{address}:{listener.getsockname()[1]}"
    print(f"kcnn serve: {onnx_path} as model {model_name!r}: images {_shape_text(model.shape, batch=True)}, "
          f"{len(model.class_names)} classes, onnxruntime", flush=True)
    # uvicorn handles SIGINT and SIGTERM while it serves (graceful shutdown), then raises the signal again with
    # the handlers found before it: these, so that the process then ends normally, with exit code 0.
    for number in (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ():
        signal.signal(number, lambda *_: None)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            # The URL only once uvicorn handles SIGINT and SIGTERM: a client or script that stops the server as soon
            # as it reads this line must stop it (a signal before would meet the handlers above and be lost).
            print(f"kcnn serve: {url}/ (the page), {url}/v1/models/{model_name}:predict (TensorFlow Serving's REST "
                  f"API); Ctrl-C or SIGTERM stops it", flush=True)

        async def shutdown(self, sockets=None):
            app.state.stopping(shutdown_timeout_s)  # bodies still arriving: shutdown_timeout_s at most, then 408
            await super().shutdown(sockets)

    config = uvicorn.Config(app, http=_connection_class(), lifespan="on", ws="none", log_level="warning",
                            access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=shutdown_timeout_s + SHUTDOWN_RUN_S)
    Server(config).run(sockets=[listener])
    print("kcnn serve: stopped", flush=True)


def _connection_class():
    """uvicorn's HTTP/1.1 connection (h11), which no client can hold open without a request in progress. uvicorn
    starts its keep-alive timer only after a response and stops it on any byte received: a client that connects
    and sends nothing, or a request's headers a byte at a time, would hold the connection (and delay the exit
    after SIGTERM) for ever. Here the timer runs from the connection's start and from each response until the
    headers of a request are all in; the body has its own deadline (make_app)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Connection(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

        def data_received(self, data):
            timer, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None  # what uvicorn would stop
            cycle = self.cycle
            super().data_received(data)
            if timer is not None:
                if self.cycle is cycle and self.timeout_keep_alive_task is None:  # no new request yet
                    self.timeout_keep_alive_task = timer
                else:
                    timer.cancel()

    return Connection


def _listen(host, port):
    """The listening socket. Its protocol is named (IPPROTO_TCP, where socket.create_server leaves 0) so that asyncio
    sets TCP_NODELAY on the connections: without it, each keep-alive request waits 40 ms for a delayed ACK."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, protocol)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port just freed, not one in use
            listener.bind(address)
            listener.listen(2048)
        except OSError:
            listener.close()
            raise
        return listener
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ServeError(f"Port {port} of {host} is in use by another program; pass another --port (0: any "
                             f"free port).") from None
        raise ServeError(f"Cannot listen on {host} port {port} ({error.strerror or error}); pass another --host "
                         f"or --port.") from None


# ---- the model ---------------------------------------------------------------------------------------------------


class Model:
    """A kcnn ONNX export on onnxruntime: input `image` (batch, H, W, C) float32 raw pixels, outputs
    `probabilities` and `class_index`; its class names from class_names.txt beside it, else its metadata."""

    def __init__(self, path, name=MODEL_NAME):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if hasattr(os, "sched_getaffinity"):
            # onnxruntime counts the machine's cores, not those this process may use: pinned to one of two
            # cores (taskset), its two threads took turns on it and ran 2.2x slower (bench/serving.py)
            options.intra_op_num_threads = len(os.sched_getaffinity(0))
        try:
            self.session = onnxruntime.InferenceSession(path, options,
                                                        providers=onnxruntime.get_available_providers())
        except Exception as error:
            reason = (str(error).strip().splitlines() or ["no details"])[0][:200]
            raise ServeError(f"{path} cannot be loaded by onnxruntime ({reason}); pass a model.onnx written by "
                             f"`kcnn export RUN --format onnx`.") from None
        inputs, outputs = self.session.get_inputs(), {o.name: o for o in self.session.get_outputs()}
        if ([i.name for i in inputs] != ["image"] or len(inputs[0].shape) != 4
                or not {"probabilities", "class_index"} <= set(outputs)):
            raise ServeError(f"{path} is not a kcnn export (one input `image` of shape (batch, height, width, "
                             f"channels), outputs `probabilities` and `class_index`); export the model with "
                             f"`kcnn export RUN --format onnx`.")
        self.path, self.name = path, name
        self.shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape[1:])  # None: any size
        self.class_names = _class_names(path, self.session, outputs["probabilities"].shape[-1])
        self._probe()

    def _probe(self):
        """Refuse a model that gives NaN or infinity on plain images (a black one and a grey one): training
        diverged, and every answer would be NaN, which JSON cannot hold."""
        size = (self.shape[0] or 224, self.shape[1] or 224, self.shape[2] or 3)  # any size: a usual one
        images = np.stack([np.zeros(size, np.float32), np.full(size, 128, np.float32)])
        try:
            probabilities, _ = self.run(images)
        except Exception as error:
            reason = (str(error).strip().splitlines() or ["no details"])[0][:200]
            raise ServeError(f"{self.path} fails on a plain grey image of shape {size} ({reason}); pass a "
                             f"model.onnx written by `kcnn export RUN --format onnx`.") from None
        if not np.isfinite(probabilities).all():
            raise ServeError(f"{self.path} gives NaN or infinite outputs on a plain grey image: the model diverged "
                             f"in training; retrain it with a lower learning rate.")

    def run(self, images: np.ndarray) -> list:
        """(probabilities, class indices) of a float32 batch."""
        return self.session.run(["probabilities", "class_index"], {"image": images})

    def status(self) -> dict:
        return {"model_version_status": [{"version": str(VERSION), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self) -> dict:
        """GetModelMetadata's JSON, as TensorFlow Serving gives it for kcnn's SavedModel."""
        def tensor(name, dtype, dims):
            return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(-1 if d is None else d), "name": ""}
                                                             for d in dims], "unknown_rank": False}, "name": name}

        outputs = {"class_index": tensor("StatefulPartitionedCall:0", "DT_INT32", [None]),
                   "class_name": tensor("StatefulPartitionedCall:1", "DT_STRING", [None]),
                   "probabilities": tensor("StatefulPartitionedCall:2", "DT_FLOAT", [None, len(self.class_names)])}
        signature = {"inputs": {"image": tensor("serving_default_image:0", "DT_FLOAT", [None, *self.shape])},
                     "outputs": outputs, "method_name": "tensorflow/serving/predict"}
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(VERSION)},
                "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}}}


def _class_names(path, session, count):
    beside = os.path.join(os.path.dirname(path), "class_names.txt")
    names = None
    if os.path.isfile(beside):
        with open(beside, encoding="utf-8") as f:
            names = f.read().splitlines()
    elif "class_names" in session.get_modelmeta().custom_metadata_map:
        names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
    if names is None:
        return [str(i) for i in range(count)] if isinstance(count, int) else []
    if isinstance(count, int) and len(names) != count:
        raise ServeError(f"{len(names)} class names (class_names.txt beside {path}, or its metadata) for a model "
                         f"with {count} outputs; pass the export folder kcnn wrote (one name a line, one a class).")
    return names


def _shape_text(shape, batch=False):
    """"(32, 32, 3)", or "(batch, 32, 32, 3)"; a size the model leaves open is "any"."""
    return "(" + ", ".join((["batch"] if batch else []) + ["any" if d is None else str(d) for d in shape]) + ")"


# ---- requests ----------------------------------------------------------------------------------------------------


def parse_predict(body: bytes, shape: tuple) -> tuple[np.ndarray, str]:
    """(float32 images (n, *shape), "row" or "columnar") of a predict request's body; a RequestError (TF Serving's
    message where it has one) if the body is not one."""
    if not body.strip():
        raise RequestError("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)
    except json.JSONDecodeError as error:
        raise RequestError(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except (UnicodeDecodeError, RecursionError) as error:
        reason = "nested too deep" if isinstance(error, RecursionError) else "the body is not UTF-8 text"
        raise RequestError(f"JSON Parse error: {reason}") from None
    if not isinstance(request, dict):
        raise RequestError(f"JSON Value: {_short(request)} Is not object; send {{\"instances\": [...]}} or "
                           f"{{\"inputs\": [...]}}")
    signature = request.get("signature_name", "")
    if not isinstance(signature, str):
        raise RequestError("'signature_name' key must be a string value")
    if signature not in ("", SIGNATURE):
        raise RequestError(f'Serving signature name: "{signature}" not found in signature def; this model has '
                           f'"{SIGNATURE}" only')
    if "instances" in request and "inputs" in request:
        raise RequestError("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise RequestError("Expecting 'instances' to be an list/array")
        if not instances:
            raise RequestError("No values in 'instances' array")
        _check_request_size(instances)
        where = "Failed to process element: {} of 'instances' list"
        return _stack([_image(item, where.format(i), shape) for i, item in enumerate(instances)]), "row"
    if "inputs" in request:
        inputs = request["inputs"]
        if isinstance(inputs, dict) and set(inputs) != {"b64"}:
            if "image" not in inputs:
                raise RequestError("Missing named input: image in 'inputs' object.")
            inputs = inputs["image"]
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(f"Expecting 'inputs' to be a batch: a list of images, shape "
                               f"{_shape_text(shape, batch=True)}")
        _check_request_size(inputs)
        where = "Failed to process element: {} of 'inputs'"
        return _stack([_image(item, where.format(i), shape) for i, item in enumerate(inputs)]), "columnar"
    raise RequestError("Missing 'inputs' or 'instances' key")


def _image(item, where, shape):
    """One image (H, W, C) float32 of nested lists, {"image": ...} or {"b64": ...}."""
    if isinstance(item, dict) and set(item) == {"image"}:
        item = item["image"]
    if isinstance(item, dict):
        if set(item) == {"b64"} and isinstance(item["b64"], str):
            return _decode(item["b64"], where, shape)
        raise RequestError(f"{where}. JSON object: {_short(item)} keys must be equal to: image (or b64, a string)")
    try:
        image = np.array(item)
    except ValueError:  # NumPy's "inhomogeneous shape"
        raise RequestError(f"{where}: its nested lists are ragged (rows of different lengths); send each image as "
                           f"{_shape_text(shape)} lists of numbers") from None
    if image.dtype.kind not in "iuf":
        raise RequestError(f"{where}: it holds text, true/false, null or objects where numbers belong; send raw "
                           f"0-255 pixel values as JSON numbers")
    if image.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, image.shape)):
        raise RequestError(f"{where}: an image of shape {tuple(image.shape)}, but the model takes images of shape "
                           f"{_shape_text(shape)} (height, width, channels: raw 0-255 pixels); resize it, or "
                           f"send its PNG or JPEG bytes as {{\"b64\": \"...\"}}")
    if image.size and not np.isfinite(image).all():
        raise RequestError(f"{where}: it holds NaN or infinite values (NaN, Infinity or a number like 1e400); "
                           f"pixel values must be finite numbers 0-255")
    if image.size and not 0 <= image.min() <= image.max() <= 255:
        raise RequestError(f"{where}: it holds values from {image.min():g} to {image.max():g}; pixel values must be "
                           f"finite numbers 0-255 (raw pixels: the model scales them itself)")
    return image.astype(np.float32)


def _check_request_size(images):
    """413 for a request of over MAX_INSTANCES images or MAX_REQUEST_PIXELS pixels together, counted before any
    image is decoded: from nested lists' lengths, and from b64 files' headers (Pillow's open reads only those)."""
    if len(images) > MAX_INSTANCES:
        raise RequestError(f"The request holds {len(images):,} images, over this server's limit of {MAX_INSTANCES:,} "
                           f"a request; send them in several requests", 413)
    pixels = sum(_pixel_count(image) for image in images)
    if pixels > MAX_REQUEST_PIXELS:
        raise RequestError(f"The request's images hold {pixels:,} pixels together, over this server's limit of "
                           f"{MAX_REQUEST_PIXELS:,} a request; send fewer or smaller images per request", 413)


def _pixel_count(item):
    """Height x width of an image of a request, without decoding it; 0 for one that _image will refuse."""
    from PIL import Image

    if isinstance(item, dict) and set(item) == {"image"}:
        item = item["image"]
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            return 0
        try:
            with Image.open(io.BytesIO(base64.b64decode(item["b64"])), formats=IMAGE_FORMATS) as image:
                return image.width * image.height
        except Exception:  # not an image, or one over Pillow's bomb limit: _decode says so
            return 0
    if isinstance(item, list) and item and isinstance(item[0], list):
        return len(item) * len(item[0])
    return 0


def _decode(text, where, shape):
    """A b64 PNG or JPEG (or BMP, GIF, WebP) as float32 (H, W, C), decoded as `kcnn predict` decodes a file
    (kcnn.data.folder.read_image: upright by its EXIF orientation, 16-bit pixels scaled to 8 bits), converted
    and resized to the model's input."""
    height, width, channels = shape
    if channels not in (1, 3):
        raise RequestError(f"{where}: the model takes {channels} channels, which no image file has; send nested "
                           f"lists of numbers")
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: Unable to base64 decode; send the file's bytes in standard base64") from None
    try:
        image = read_image(data, "L" if channels == 1 else "RGB", (height, width), MAX_PIXELS)
    except ImageTooLargeError as error:
        raise RequestError(f"{where}: the image has {error.size[0]}x{error.size[1]} pixels, over this server's "
                           f"limit of {MAX_PIXELS:,}; send a smaller image") from None
    except CorruptImageError:  # unknown format, truncated, decompression bomb
        raise RequestError(f"{where}: its b64 bytes are not an image Pillow can read; send a PNG, JPEG, BMP, GIF or "
                           f"WebP file") from None
    return image.astype(np.float32).reshape(*image.shape[:2], channels)


def _stack(images):
    shapes = {image.shape for image in images}
    if len(shapes) > 1:  # a model that takes any size: every image of a request must have the same
        raise RequestError(f"The images of one request must have one shape; received {len(shapes)}: "
                           f"{', '.join(map(str, sorted(shapes)))}")
    return np.stack(images)


def _short(value, limit=60):
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def answer(probabilities: list, indices: list, class_names: Sequence[str], format: str) -> dict:
    """The predict response: TF Serving's rows (one object per image, the outputs by name) or columns."""
    # Floats as TF Serving writes them: the shortest decimal that gives the same float32.
    probabilities = [[float(str(p)) for p in row] for row in probabilities]
    indices = [int(i) for i in indices]
    names = [class_names[i] for i in indices]
    if format == "row":
        return {"predictions": [{"class_index": i, "class_name": n, "probabilities": p}
                                for i, n, p in zip(indices, names, probabilities)]}
    return {"outputs": {"class_index": indices, "class_name": names, "probabilities": probabilities}}


# ---- batching ----------------------------------------------------------------------------------------------------


class Batcher:
    """One queue in front of the model: whatever is waiting, up to `max_batch` images, goes in one run."""

    def __init__(self, model, max_batch):
        self.model, self.max_batch = model, max_batch
        self.waiting = collections.deque()  # (images, future)
        self.wakeup = asyncio.Event()

    async def predict(self, images: np.ndarray) -> tuple:
        """(probabilities, class indices, how many images the run that answered held)."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((images, future))
        self.wakeup.set()
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.waiting:
                batch = [self.waiting.popleft()]
                size = len(batch[0][0])
                while (self.waiting and size + len(self.waiting[0][0]) <= self.max_batch
                       and self.waiting[0][0].shape == batch[0][0].shape):  # same image size (models of any size)
                    batch.append(self.waiting.popleft())
                    size += len(batch[-1][0])
                images = np.concatenate([images for images, _ in batch]) if len(batch) > 1 else batch[0][0]
                try:
                    probabilities, indices = await loop.run_in_executor(None, self._run, images)
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                start = 0
                for part, future in batch:
                    if not future.done():  # a client that went away
                        future.set_result((probabilities[start:start + len(part)],
                                           indices[start:start + len(part)], size))
                    start += len(part)

    def _run(self, images):
        """The model on at most max_batch images at a time: a request of many large images would otherwise need
        the activations of all of them at once."""
        if len(images) <= self.max_batch:
            return self.model.run(images)
        parts = [self.model.run(images[i:i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        return [np.concatenate(outputs) for outputs in zip(*parts)]


# ---- the application ---------------------------------------------------------------------------------------------


def make_app(model: Model, *, max_body_mb: float = MAX_BODY_MB, max_batch: int = MAX_BATCH,
             body_timeout_s: float = BODY_TIMEOUT_S) -> Any:
    """The Starlette application serving `model` (a Model). `app.state.stopping(seconds)`: the server is stopping,
    and the bodies still arriving have `seconds` at most."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    batcher = Batcher(model, max_batch)
    parsing = asyncio.Semaphore(PARSING_AT_ONCE)
    limit = int(max_body_mb * 1024 * 1024)
    receiving = set()  # the deadlines (asyncio.Timeout) of the bodies arriving now
    stop_by = math.inf  # the loop's time by which every body must be in: set by stopping()
    with open(PAGE, encoding="utf-8") as f:
        settings = {"model": model.name, "height": model.shape[0], "width": model.shape[1],
                    "channels": model.shape[2], "class_names": model.class_names}
        page = f.read().replace("__KCNN_SETTINGS__", json.dumps(settings).replace("<", "\\u003c"))

    def reply(content, status=200, headers=None):
        # allow_nan=False: NaN and Infinity are not JSON, and clients' parsers refuse them
        return Response(json.dumps(content, allow_nan=False), status, headers, media_type="application/json")

    def stopping(seconds):
        nonlocal stop_by
        stop_by = asyncio.get_running_loop().time() + seconds
        for deadline in receiving:
            deadline.reschedule(min(deadline.when(), stop_by))

    def too_large(size):
        return RequestError(f"The request body {size} this server's limit of {max_body_mb:g} MB "
                            f"(--max-body-mb); send fewer images per request, or PNG or JPEG bytes as "
                            f"{{\"b64\": \"...\"}}", 413, close=True)

    async def receive_body(request):
        """The body of a predict request, refused (413) from its Content-Length before reading it, or as it
        arrives when chunked; 408 when it is not all in within body_timeout_s (or by stop_by)."""
        declared = request.headers.get("content-length")  # digits only: h11 refuses other values
        if declared is not None and int(declared) > limit:
            raise too_large(f"has {int(declared) / 2**20:.1f} MB, over")
        body, size = [], 0
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(loop.time() + body_timeout_s, stop_by)) as deadline:
                receiving.add(deadline)
                try:
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > limit:
                            raise too_large("is over")
                        body.append(chunk)
                finally:
                    receiving.discard(deadline)
        except TimeoutError:
            raise RequestError(f"The request body did not all arrive within {body_timeout_s:g} s of its headers "
                               f"(--body-timeout-s), or before the server stopped; send it at once", 408,
                               close=True) from None
        return b"".join(body)

    def servable(request):
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != model.name or version not in (None, VERSION):
            found = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise RequestError(f"Servable not found for request: {found}", 404)

    async def status(request):
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != model.name:
            raise RequestError(f"Could not find any versions of model {name}", 404)
        if version not in (None, VERSION):
            raise RequestError(f"Could not find version {version} of model {name}", 404)
        return reply(model.status())

    async def metadata(request):
        servable(request)
        return reply(model.metadata())

    async def predict(request):
        servable(request)
        try:
            body = await receive_body(request)
        except ClientDisconnect:  # one line, not the traceback of an exception nobody can act on
            print("kcnn serve: a client disconnected before its request was complete", file=sys.stderr, flush=True)
            return Response(status_code=400)  # to no one: uvicorn drops what is sent on a closed connection
        async with parsing:
            images, format = await run_in_threadpool(parse_predict, body, model.shape)
        probabilities, indices, batch = await batcher.predict(images)
        if not np.isfinite(probabilities).all():
            raise RequestError("Internal error: the model gave NaN or infinite probabilities for these images, "
                               "which JSON cannot hold; it is numerically unstable on them (retrain it with a lower "
                               "learning rate)", 500)
        content = answer(probabilities, indices, model.class_names, format)
        return reply(content, headers={"X-Kcnn-Batch": str(batch)})  # images in the run: batching at work

    async def home(request):
        return HTMLResponse(page)

    async def refused(request, error):
        return reply({"error": str(error)}, error.status, {"Connection": "close"} if error.close else None)

    async def unknown(request, error):
        where = f"{request.method} {request.url.path}"
        if error.status_code == 405:
            allowed = [method for method in error.headers.get("Allow", "GET").split(", ") if method != "HEAD"]
            message = f"Malformed request: {where}; this path answers {', '.join(allowed)} only"
        else:
            message = (f"Malformed request: {where}; this server answers GET /, GET /v1/models/{model.name}, "
                       f"GET /v1/models/{model.name}/metadata and POST /v1/models/{model.name}:predict")
        return reply({"error": message}, error.status_code, error.headers)

    async def failed(request, error):  # a bug, or onnxruntime failing: still TF Serving's form (and a log entry)
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return reply({"error": f"Internal error: {type(error).__name__}: {first}"}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    _register_convertors()
    prefixes = ("/v1/models/{name:model}", "/v1/models/{name:model}/versions/{version:int}")
    routes = [Route("/", home, methods=["GET"])]
    for prefix in prefixes:
        routes += [Route(prefix, status, methods=["GET"]), Route(prefix + "/metadata", metadata, methods=["GET"]),
                   Route(prefix + ":predict", predict, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={RequestError: refused, HTTPException: unknown, Exception: failed})
    app.state.stopping = stopping
    return app


def _register_convertors():
    """{name:model}: a model name as TensorFlow Serving's URLs take it, without '/' or ':'."""
    from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor

    class ModelName(Convertor):
        regex = "[^/:]+"

        def convert(self, value):
            return value

        def to_string(self, value):
            return value

    if "model" not in CONVERTOR_TYPES:
        register_url_convertor("model", ModelName())
