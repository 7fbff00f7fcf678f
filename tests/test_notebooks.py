"""Execute the teaching notebooks top to bottom (nbclient) and fail on any error.

Each notebook asserts its own key numbers (gradient-check errors, accuracy above chance,
streaming equal to whole-sequence evaluation, updates per neuron far below a dense LSTM), so
an executed notebook without error outputs is a pass. The kernel is ipykernel's own
``python3`` kernel run by the interpreter running the tests (``sys.executable``), whatever
kernelspecs are installed elsewhere, and the checkout under test is put first on the kernel's
``PYTHONPATH``. The notebooks are committed executed, with their figures; a test checks that
the committed copies ran top to bottom without errors. ``python tests/test_notebooks.py``
re-executes them in place the same way (without per-cell timings).

The tests need the ``test`` extras (nbformat, nbclient, ipykernel): without them they fail,
saying what is missing, unless ``PLSTM_NP_SKIP_NOTEBOOKS=1`` asks to skip them. Deselect them
with ``-m "not notebooks"``.
"""
import importlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_PER_CELL_S = 600
SKIP_VARIABLE = "PLSTM_NP_SKIP_NOTEBOOKS"
TOOLS = ("nbformat", "nbclient", "ipykernel", "jupyter_client")  # jupyter_client: with nbclient

pytestmark = pytest.mark.notebooks


def import_tools():
    """nbformat, nbclient and jupyter_client's managers; an ImportError names what is missing."""
    missing = []
    for name in TOOLS:
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    if missing:
        raise ImportError(f"the notebooks need the test extras; missing: {'; '.join(missing)}")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    return SimpleNamespace(nbformat=importlib.import_module("nbformat"),
                           nbclient=importlib.import_module("nbclient"),
                           KernelSpecManager=KernelSpecManager, KernelManager=KernelManager)


@pytest.fixture(scope="module")
def tools():
    """The notebook tools; fail without them, or skip when PLSTM_NP_SKIP_NOTEBOOKS=1."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: notebook tests skipped on request")
    try:
        return import_tools()
    except ImportError as err:
        pytest.fail(f'{err}. Install them with `pip install -e ".[test]"`, deselect these '
                    f'tests with `-m "not notebooks"`, or set {SKIP_VARIABLE}=1 to skip them.',
                    pytrace=False)


def execute(path, tools):
    """Run the notebook at ``path`` top to bottom and return it, executed.

    The kernel is ipykernel's built-in ``python3`` kernel, whose command is this interpreter (a
    "python3" kernelspec in the user's or the system's Jupyter folders could point anywhere
    else), started in ``notebooks/`` with the checkout first on its ``PYTHONPATH``. Raises
    ``CellExecutionError``, showing the failing cell, on any error. No per-cell timings are
    recorded (they would change every diff of a committed notebook).
    """
    specs = tools.KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    kernel = tools.KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    nb = tools.nbformat.read(path, as_version=4)
    client = tools.nbclient.NotebookClient(
        nb, km=kernel, timeout=TIMEOUT_PER_CELL_S, record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    pythonpath = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    client.execute(env=dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath)))
    return nb


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def error_outputs(nb):
    return [(index, output.get("ename"), output.get("evalue"))
            for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == "error"]


def test_all_four_notebooks_present():
    names = [path.stem for path in NOTEBOOKS]
    assert names == ["01_time_gate", "02_bptt_by_hand", "03_frequency_discrimination",
                     "04_event_based_vision"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_executed(path, tools):
    # Committed with outputs: run top to bottom in one kernel, no errors, at least one figure,
    # and no per-cell execution timings (they would change every diff).
    nb = tools.nbformat.read(path, as_version=4)
    counts = [cell.execution_count for cell in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), \
        f"{path.name}: execution counts {counts}; run the notebook top to bottom and save it"
    assert not error_outputs(nb), f"{path.name}: error outputs {error_outputs(nb)}"
    figures = sum("image/png" in output.get("data", {})
                  for cell in code_cells(nb) for output in cell.outputs)
    assert figures >= 1, f"{path.name}: no figure in the outputs"
    timed = [index for index, cell in enumerate(nb.cells) if "execution" in cell.metadata]
    assert not timed, f"{path.name}: cells {timed} keep execution timings (strip them)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, tools):
    nb = execute(path, tools)
    assert not error_outputs(nb), f"{path.name}: error outputs {error_outputs(nb)}"
    assert all(cell.execution_count is not None for cell in code_cells(nb)), "a cell did not run"


def main(names):
    """Execute the named notebooks (default: all four) in place, as committed."""
    tools = import_tools()
    for path in [NOTEBOOK_DIR / name for name in names] or NOTEBOOKS:
        metadata = tools.nbformat.read(path, as_version=4).metadata  # not the kernel's versions
        nb = execute(path, tools)
        nb.metadata = metadata
        if error_outputs(nb):
            raise SystemExit(f"{path.name}: error outputs {error_outputs(nb)}; not written")
        tools.nbformat.write(nb, path)
        print(f"{path.name}: executed and written ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":   # python tests/test_notebooks.py [NAME.ipynb ...]
    import sys

    main(sys.argv[1:])
