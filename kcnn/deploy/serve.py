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
predict does). Errors are TF Serving's: `{"error": "<one sentence>"}` with a 4xx status.

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

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading

import numpy as np

from kcnn.data.folder import CorruptImageError, ImageTooLargeError, read_image
from kcnn.errors import KcnnError

MODEL_NAME = "model"  # TensorFlow Serving's docker image serves MODEL_NAME=model unless told otherwise
HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 for every interface
PORT = 8501  # TensorFlow Serving's REST port
MAX_BODY_MB = 32  # largest request body, MiB (413 above)
MAX_BATCH = 32  # most images in one session.run
MAX_PIXELS = 64 * 1024 * 1024  # a b64 image larger than this is refused before decoding (as kcnn.data.folder)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
SIGNATURE = "serving_default"
VERSION = 1
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")
SOURCES = "pass a run directory, an ONNX export folder (kcnn export RUN --format onnx) or a model.onnx file"


class ServeError(KcnnError):
    """A SOURCE that cannot be served, or a setting out of range (kcnn serve)."""


class RequestError(Exception):
    """A request answered with TensorFlow Serving's {"error": message} and a 4xx status."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# ---- the command: settings, SOURCE, conversion, the serving process --------------------------------------------


def add_arguments(parser):
    parser.add_argument("source", help="a run directory, an ONNX export folder (model.onnx and class_names.txt) or "
                        "a model.onnx file")
    parser.add_argument("--model-name", default=MODEL_NAME, help=f"the NAME in /v1/models/NAME (default "
                        f"{MODEL_NAME}, as TensorFlow Serving's docker image)")
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=PORT, help=f"default {PORT}, TensorFlow Serving's REST port; "
                        f"0: any free port (printed)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB,
                        help=f"largest request body in MB; larger ones get 413 (default {MAX_BODY_MB})")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help=f"most images in one inference run: "
                        f"concurrent requests are batched up to it (default {MAX_BATCH}; 1: no batching)")


def start(source, *, model_name=MODEL_NAME, host=HOST, port=PORT, max_body_mb=MAX_BODY_MB, max_batch=MAX_BATCH):
    """`kcnn serve`: check the settings and SOURCE, convert a Keras model to ONNX if SOURCE has no ONNX file,
    then become the serving process (exec; on other systems than POSIX, serve here). Returns the exit code."""
    check_settings(model_name, port, max_body_mb, max_batch)
    onnx_path, keras_path = find_source(source)
    temporary = None
    if onnx_path is None:
        onnx_path, temporary = convert(keras_path)
    argv = [onnx_path, "--model-name", model_name, "--host", host, "--port", str(port),
            "--max-body-mb", str(max_body_mb), "--max-batch", str(max_batch)]
    argv += ["--remove-at-exit", temporary] if temporary else []
    if os.name != "posix":
        return main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [*server_command(), *argv])


def server_command():
    """The command line of a serving process, to which SOURCE and the flags are added: this module alone, without
    running kcnn's package __init__ (which imports Keras): a bare `kcnn` package whose path is kcnn's folder."""
    folder = os.path.dirname(os.path.abspath(__file__))
    bootstrap = ("import sys, types; kcnn = types.ModuleType('kcnn'); kcnn.__path__ = [%r]; sys.modules['kcnn'] = "
                 "kcnn; from kcnn.deploy.serve import main; sys.exit(main())" % folder)
    return [sys.executable, "-c", bootstrap]


def main(argv=None):
    """The serving process: SOURCE holds an ONNX model; on bad input, one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="kcnn serve")
    add_arguments(parser)
    parser.add_argument("--remove-at-exit", help=argparse.SUPPRESS)  # the temporary folder of a conversion
    args = parser.parse_args(argv)
    try:
        check_settings(args.model_name, args.port, args.max_body_mb, args.max_batch)
        onnx_path, keras_path = find_source(args.source)
        if onnx_path is None:
            raise ServeError(f"{args.source} holds a Keras model and no ONNX one: serve it with `kcnn serve`, which "
                             f"converts it, or convert it with `kcnn export {args.source} --format onnx`.")
        serve(onnx_path, model_name=args.model_name, host=args.host, port=args.port,
              max_body_mb=args.max_body_mb, max_batch=args.max_batch)
    except KcnnError as error:
        print(f"kcnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the server started (then uvicorn handles it)
        return 130
    finally:
        if args.remove_at_exit:
            shutil.rmtree(args.remove_at_exit, ignore_errors=True)
    return 0


def check_settings(model_name, port, max_body_mb, max_batch):
    if not isinstance(model_name, str) or not re.fullmatch(r"[^/:\s]+", model_name):
        raise ServeError(f"The model name goes into the URL /v1/models/NAME: it needs at least one character and "
                         f"no '/', ':' or spaces. Received: model_name={model_name!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"port must be a whole number from 0 (any free port) to 65535. Received: port={port!r}")
    if isinstance(max_body_mb, bool) or not isinstance(max_body_mb, (int, float)) or not max_body_mb > 0:
        raise ServeError(f"max_body_mb must be a number of megabytes above 0. Received: max_body_mb={max_body_mb!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ServeError(f"max_batch must be a whole number of at least 1 (1: no batching). "
                         f"Received: max_batch={max_batch!r}")


def find_source(source):
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


def convert(keras_path):
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


def serve(onnx_path, *, model_name=MODEL_NAME, host=HOST, port=PORT, max_body_mb=MAX_BODY_MB, max_batch=MAX_BATCH):
    """Serve `onnx_path` in this process until SIGTERM or Ctrl-C; the requests in flight finish first."""
    import uvicorn

    check_settings(model_name, port, max_body_mb, max_batch)
    model = Model(onnx_path, model_name)
    listener = _listen(host, port)
    app = make_app(model, max_body_mb=max_body_mb, max_batch=max_batch)
    address = f"[{host}]" if ":" in host else host
    url = f"http://{address}:{listener.getsockname()[1]}"
    print(f"kcnn serve: {onnx_path} as model {model_name!r}: images {_shape_text(model.shape, batch=True)}, "
          f"{len(model.class_names)} classes, onnxruntime", flush=True)
    print(f"kcnn serve: {url}/ (the page), {url}/v1/models/{model_name}:predict (TensorFlow Serving's REST API); "
          f"Ctrl-C or SIGTERM stops it", flush=True)
    # uvicorn handles SIGINT and SIGTERM while it serves (graceful shutdown), then raises the signal again with
    # the handlers found before it: these, so that the process then ends normally, with exit code 0.
    for number in (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ():
        signal.signal(number, lambda *_: None)
    config = uvicorn.Config(app, lifespan="on", ws="none", log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])
    print("kcnn serve: stopped", flush=True)


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

    def run(self, images):
        """(probabilities, class indices) of a float32 batch."""
        return self.session.run(["probabilities", "class_index"], {"image": images})

    def status(self):
        return {"model_version_status": [{"version": str(VERSION), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self):
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


def parse_predict(body, shape):
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
    return image.astype(np.float32)


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


def answer(probabilities, indices, class_names, format):
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

    async def predict(self, images):
        """(probabilities, class indices, how many images the run that answered held)."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((images, future))
        self.wakeup.set()
        return await future

    async def run(self):
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
                    probabilities, indices = await loop.run_in_executor(None, self.model.run, images)
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


# ---- the application ---------------------------------------------------------------------------------------------


def make_app(model, *, max_body_mb=MAX_BODY_MB, max_batch=MAX_BATCH):
    """The Starlette application serving `model` (a Model)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    batcher = Batcher(model, max_batch)
    limit = int(max_body_mb * 1024 * 1024)
    with open(PAGE, encoding="utf-8") as f:
        settings = {"model": model.name, "height": model.shape[0], "width": model.shape[1],
                    "channels": model.shape[2], "class_names": model.class_names}
        page = f.read().replace("__KCNN_SETTINGS__", json.dumps(settings).replace("<", "\\u003c"))

    def reply(content, status=200, headers=None):
        return Response(json.dumps(content), status, headers, media_type="application/json")

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
        body, size = [], 0
        async for chunk in request.stream():  # read to the end even when too large: the client then reads the 413
            size += len(chunk)
            if size <= limit:
                body.append(chunk)
        if size > limit:
            raise RequestError(f"The request body has {size / 2**20:.1f} MB, over this server's limit of "
                               f"{max_body_mb:g} MB (--max-body-mb); send fewer images per request, or PNG or JPEG "
                               f"bytes as {{\"b64\": \"...\"}}", 413)
        images, format = await run_in_threadpool(parse_predict, b"".join(body), model.shape)
        probabilities, indices, batch = await batcher.predict(images)
        content = answer(probabilities, indices, model.class_names, format)
        return reply(content, headers={"X-Kcnn-Batch": str(batch)})  # images in the run: batching at work

    async def home(request):
        return HTMLResponse(page)

    async def refused(request, error):
        return reply({"error": str(error)}, error.status)

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
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={RequestError: refused, HTTPException: unknown, Exception: failed})


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
