"""Regenerate kcnn/weights/imagenet_class_index.json, the 1,000 ImageNet-1k
classes as {index: [WordNet id, name]} (Keras' imagenet_class_index.json
layout; the name is the first WordNet lemma, as in Keras' file).

    pip install timm && python -m kcnn.weights.make_imagenet_classes

The source is timm's `imagenet_synsets.txt` (the class order every ImageNet
checkpoint uses) and `imagenet_synset_to_lemma.txt` (Apache-2.0).
"""

from __future__ import annotations

import json
import os


def main() -> None:
    import timm.data

    info = os.path.join(os.path.dirname(timm.data.__file__), "_info")
    with open(os.path.join(info, "imagenet_synsets.txt")) as f:
        synsets = [line.strip() for line in f if line.strip()]
    with open(os.path.join(info, "imagenet_synset_to_lemma.txt")) as f:
        lemmas = dict(line.rstrip("\n").split("\t", 1) for line in f)
    index = {str(i): [synset, lemmas[synset].split(",")[0].strip()] for i, synset in enumerate(synsets)}
    assert len(index) == 1000, len(index)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_class_index.json")
    with open(path + ".tmp", "w") as f:
        json.dump(index, f, separators=(",", ":"))
    os.replace(path + ".tmp", path)
    print(f"wrote {path}: {len(index)} classes")


if __name__ == "__main__":
    main()
