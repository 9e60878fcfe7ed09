"""`kcnn serve`'s flags and their defaults, apart from the server (kcnn.deploy.serve imports NumPy and the image
readers): `kcnn --help` builds every subcommand's parser and must answer at once."""

from __future__ import annotations

import argparse

MODEL_NAME = "model"  # TensorFlow Serving's docker image serves MODEL_NAME=model unless told otherwise
HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 for every interface
PORT = 8501  # TensorFlow Serving's REST port
MAX_BODY_MB = 32  # largest request body, MiB (413 above)
MAX_BODY_MB_LIMIT = 4096  # the most --max-body-mb takes: a body is held in memory whole, then parsed
MAX_BATCH = 32  # most images in one session.run
BODY_TIMEOUT_S = 30  # a request's whole body must arrive within this of its headers (408 after)
SHUTDOWN_S = 10  # after SIGTERM, a body still arriving has this long at most (408 after)
MAX_TIMEOUT_S = 3600  # the most --body-timeout-s and --shutdown-timeout-s take


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run directory, an ONNX export folder (model.onnx and class_names.txt) or "
                        "a model.onnx file")
    parser.add_argument("--model-name", default=MODEL_NAME, help=f"the NAME in /v1/models/NAME (default "
                        f"{MODEL_NAME}, as TensorFlow Serving's docker image)")
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=PORT, help=f"default {PORT}, TensorFlow Serving's REST port; "
                        f"0: any free port (printed)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB,
                        help=f"largest request body in MB; larger ones get 413 (default {MAX_BODY_MB}, at most "
                        f"{MAX_BODY_MB_LIMIT})")
    parser.add_argument("--body-timeout-s", type=float, default=BODY_TIMEOUT_S,
                        help=f"seconds a request's body may take to arrive; then 408 and the connection closed "
                        f"(default {BODY_TIMEOUT_S}; raise it for large bodies over slow links)")
    parser.add_argument("--shutdown-timeout-s", type=float, default=SHUTDOWN_S,
                        help=f"seconds the requests in flight have to finish after SIGTERM or Ctrl-C (default "
                        f"{SHUTDOWN_S})")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help=f"most images in one inference run: "
                        f"concurrent requests are batched up to it (default {MAX_BATCH}; 1: no batching)")
