"""Run LiteRT files with the LiteRT interpreter alone, in a process that never imports TensorFlow, Keras or kcnn.

    python tests/workers/litert_worker.py CASES_JSON OUT_NPZ      # OUT_NPZ and OUT_NPZ.json

CASES_JSON lists {"name", "model": a .tflite file, "images": a .npy of float32 images}. For each case the
worker runs the `serving_default` signature runner on all the images (batches of 64) and on the first one
alone, and on images of a wrong height; it writes the outputs to OUT_NPZ (NAME.probabilities,
NAME.class_index, NAME.first) and to OUT_NPZ.json the signature, the input's type and shape, the class names
of the file's metadata, the file's size, the wrong-shape answer and any error. Exits non-zero if anything
imported TensorFlow, Keras or kcnn: a LiteRT file must not need them.
"""

import json
import os
import sys
import traceback

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

BATCH_SIZE = 64


def metadata(path):
    """The file's metadata entries, name -> text (the LiteRT schema's `metadata` table)."""
    with open(path, "rb") as f:
        content = f.read()
    model = schema.Model.GetRootAs(content, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        entries[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8", "replace")
    return entries


def run(case):
    interpreter = Interpreter(model_path=case["model"])
    runner = interpreter.get_signature_runner("serving_default")
    images = np.load(case["images"])
    outputs = [runner(image=images[start:start + BATCH_SIZE]) for start in range(0, len(images), BATCH_SIZE)]
    arrays = {key: np.concatenate([output[key] for output in outputs]) for key in outputs[0]}
    arrays["first"] = runner(image=images[:1])["probabilities"]
    image_input = runner.get_input_details()["image"]
    try:
        runner(image=np.zeros((2, images.shape[1] - 2, *images.shape[2:]), "float32"))
        wrong_shape = "accepted"
    except Exception as error:
        wrong_shape = str(error)
    report = {"signatures": interpreter.get_signature_list(), "input_dtype": np.dtype(image_input["dtype"]).name,
              "input_shape": [int(d) for d in image_input["shape_signature"]],
              "metadata": metadata(case["model"]), "bytes": os.path.getsize(case["model"]),
              "wrong_shape": wrong_shape}
    return arrays, report


def main(cases_path, out_path):
    with open(cases_path) as f:
        cases = json.load(f)
    arrays, reports = {}, {}
    for case in cases:
        try:
            outputs, reports[case["name"]] = run(case)
            arrays.update({f"{case['name']}.{key}": value for key, value in outputs.items()})
        except Exception:
            reports[case["name"]] = {"error": traceback.format_exc()}
    np.savez(out_path, **arrays)
    with open(out_path + ".json", "w") as f:
        json.dump(reports, f, indent=1)
    imported = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "kcnn"))
    if imported:
        sys.exit(f"running the LiteRT files imported {imported[:10]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
