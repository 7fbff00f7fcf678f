"""Execute the teaching notebooks top to bottom (nbclient) and fail on any error.

Each notebook asserts its own key numbers (gradient-check errors, accuracy above chance,
streaming equal to whole-sequence evaluation, updates per neuron far below a dense LSTM), so
an executed notebook without error outputs is a pass. The kernel is ipykernel's own
``python3`` kernel run by the interpreter running the tests (``sys.executable``), whatever
kernelspecs are installed elsewhere, and the checkout under test is put first on the kernel's
``PYTHONPATH``. Deselect with ``-m "not notebooks"``.
"""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (installed with nbclient)
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_PER_CELL_S = 600

pytestmark = pytest.mark.notebooks


def test_all_four_notebooks_present():
    names = [path.stem for path in NOTEBOOKS]
    assert names == ["01_time_gate", "02_bptt_by_hand", "03_frequency_discrimination",
                     "04_event_based_vision"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {index} has outputs (strip them)"
            assert cell.execution_count is None, f"{path.name}: cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    # The kernel inherits this environment: make it import the checkout under test.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    # Only ipykernel's built-in kernelspec, whose command is this interpreter: a "python3"
    # kernelspec in the user's or the system's Jupyter folders could point anywhere else.
    specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    kernel = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, km=kernel, timeout=TIMEOUT_PER_CELL_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()        # raises CellExecutionError, showing the failing cell, on any error
    errors = [(index, output.get("ename"), output.get("evalue"))
              for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), "a cell did not run"
