"""The teaching notebooks (notebooks/*.ipynb) run top to bottom with small settings (KCNN_NOTEBOOK_QUICK=1),
in a Jupyter kernel started by nbclient (on PyTorch), and are stored without outputs.

KCNN_NOTEBOOK_PNG_DIR=folder also writes every plot the notebooks draw there, to look at them."""

import base64
import os
import pathlib

import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_the_seven_notebooks_are_there():
    assert [path.stem[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("KCNN_NOTEBOOK_QUICK", "1")
    # The kernel on PyTorch, the main job's default backend (`make demo`): its eager steps cost the seven
    # notebooks 91 CPU-seconds, JAX's compiled ones 158 (AVX-512). They run on every backend.
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    # The kernel starts in tmp_path: the notebooks' saved_models/ land there.
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}) \
        .execute()
    images = [output["data"]["image/png"] for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    assert images or path.stem.startswith("06"), "the notebook drew no plot"
    if os.environ.get("KCNN_NOTEBOOK_PNG_DIR"):
        folder = pathlib.Path(os.environ["KCNN_NOTEBOOK_PNG_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        for number, image in enumerate(images):
            (folder / f"{path.stem}_{number}.png").write_bytes(base64.b64decode(image))
