"""`kcnn serve`'s limits, measured: the exit after SIGTERM with slow and idle clients, and the serving process's
peak memory for the largest requests it takes.

    python bench/serve_limits.py                       # both parts
    python bench/serve_limits.py --parts shutdown

The model is a tiny ONNX one of 224x224x3 images (sqrt(300 - each channel's mean), written with onnx's helper):
the request's own memory (body, JSON, decoded images, the input tensor) is what is measured, not a network's
activations, which `kcnn serve` bounds by running at most --max-batch images at a time.

shutdown: `python -m kcnn serve FOLDER --port 0` (the whole command: kcnn's import, then the serving process it
becomes) with its default --shutdown-timeout-s (10 s) and with 2 s; an idle keep-alive connection (one answer
had) and a request that sent its headers and half its body when SIGTERM comes; the seconds from SIGTERM to the
process's exit, and what each client got.

memory: one fresh serving process per request, its peak resident memory (VmHWM in /proc/PID/status) after
start-up and after the request: 256 1x1 PNGs (MAX_INSTANCES, each becoming a 224x224 float32 input), two
8192x8192 PNGs (MAX_REQUEST_PIXELS, 128 Mi pixels to decode), and nested lists of 0.5 (JSON's shortest floats,
each a Python float when parsed) filling a 32 MB body (--max-body-mb's default).
"""

import argparse
import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SIZE = 224
PREDICT = "/v1/models/model:predict"


def tiny_model(folder):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("Sub", ["constant", "mean"], ["difference"]),
             helper.make_node("Sqrt", ["difference"], ["probabilities"]),
             helper.make_node("ArgMax", ["probabilities"], ["class_index"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("class_index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor("constant", TensorProto.FLOAT, [], [300.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, os.path.join(folder, "model.onnx"))
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("red\ngreen\nblue\n")
    return folder


def start(command):
    """(process, port, its output lines as they come)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    deadline = time.monotonic() + 120
    while not any("kcnn serve: http://" in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/ ", "".join(lines)).group(1))
    return process, port, lines


def read_to_close(connection):
    reply = b""
    while chunk := connection.recv(65536):
        reply += chunk
    return reply


def shutdown(folder):
    print("shutdown: seconds from SIGTERM to exit, an idle keep-alive client and a half-sent body connected")
    for flags in ([], ["--shutdown-timeout-s", "2"]):
        process, port, lines = start([sys.executable, "-m", "kcnn", "serve", folder, "--port", "0", *flags])
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /v1/models/model HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.3)
        idle.recv(65536)
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n".encode()
                     + b'{"instances": [[[1, 2, 3]')
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        seconds = time.monotonic() - started
        idle_got, slow_got = read_to_close(idle), read_to_close(slow)
        print(f"  kcnn serve {' '.join(flags) or '(defaults)':26s} exit {code} after {seconds:5.2f} s; idle client: "
              f"{'closed' if idle_got == b'' else idle_got[:20]}; slow client: {slow_got.split(b' ')[1].decode()} "
              f"then closed; traceback in the log: {'Traceback' in ''.join(lines)}")


def peak_mb(pid):
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def png(width, height):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def memory(folder):
    import requests

    from kcnn.deploy.serve import MAX_BODY_MB, server_command

    one = "[" + ",".join(["[" + ",".join(["[0.5,0.5,0.5]"] * SIZE) + "]"] * SIZE) + "]"
    count = (MAX_BODY_MB * 2**20 - 20) // (len(one) + 1)
    requests_ = [("256 1x1 PNGs (MAX_INSTANCES), each a 224x224 input", {"instances": [{"b64": png(1, 1)}] * 256}),
                 ("2 PNGs of 8192x8192 (MAX_REQUEST_PIXELS)", {"instances": [{"b64": png(8192, 8192)}] * 2}),
                 (f"{count} images as nested lists of 0.5, a 32 MB body", None)]
    print("memory: the serving process's peak resident memory (VmHWM), MB")
    for name, body in requests_:
        data = json.dumps(body).encode() if body else ('{"instances": [' + ",".join([one] * count) + "]}").encode()
        process, port, lines = start([*server_command(), os.path.join(folder, "model.onnx"), "--port", "0"])
        try:
            before = peak_mb(process.pid)
            started = time.monotonic()
            response = requests.post(f"http://127.0.0.1:{port}{PREDICT}", data=data, timeout=600)
            seconds = time.monotonic() - started
            after = peak_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        print(f"  {name:55s} body {len(data) / 2**20:6.2f} MB: {response.status_code}, {seconds:5.2f} s; peak "
              f"{before:6.0f} after start-up, {after:6.0f} after the request (+{after - before:.0f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["shutdown", "memory"], default=["shutdown", "memory"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tiny_model(folder)
        if "shutdown" in args.parts:
            shutdown(folder)
        if "memory" in args.parts:
            memory(folder)


if __name__ == "__main__":
    main()
