"""The package itself: a light import, the lazy GPU names, the public API's presence."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import plstm_np as pl

REPO = Path(__file__).resolve().parents[1]

#: Prints, as JSON, the heavy modules loaded after each step; a step is "import plstm_np"
#: or an attribute of the package to access.
_PROBE = textwrap.dedent("""
    import json, sys

    def heavy():
        return sorted(name for name in sys.modules
                      if name in ("numba", "numba.cuda") or name.startswith("numba.")
                      or name.startswith("plstm_np.backends.cuda")
                      or name.startswith("plstm_np.backends.numba"))

    import plstm_np
    report = {"import plstm_np": heavy()}
    for attribute in sys.argv[1:]:
        value = getattr(plstm_np, attribute)
        report[attribute] = heavy()
        report[attribute + ".__module__"] = value.__module__
    print(json.dumps(report))
""")


def _probe(*attributes):
    """Run :data:`_PROBE` in a fresh interpreter (this run's CUDA target: the environment is
    inherited, NUMBA_ENABLE_CUDASIM included) and return its report."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _PROBE, *attributes], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_loads_no_numba():
    """``import plstm_np`` imports neither numba (nor any numba submodule) nor any backend
    built on it."""
    report = _probe()
    assert report["import plstm_np"] == [], report


def test_gpu_classes_are_imported_lazily():
    """The GPU classes are attributes of the package, loaded on first access only: before it
    no numba, numba.cuda or plstm_np.backends.cuda module is loaded; after it they are."""
    report = _probe("CudaTrainer", "CudaStreamer")
    assert report["import plstm_np"] == [], report
    loaded = set(report["CudaTrainer"])
    assert {"numba", "numba.cuda", "plstm_np.backends.cuda",
            "plstm_np.backends.cuda.training"} <= loaded, report
    assert report["CudaTrainer.__module__"] == "plstm_np.backends.cuda.training"
    assert report["CudaStreamer.__module__"] == "plstm_np.backends.cuda.training"


def test_gpu_classes_resolve_in_process():
    assert pl.CudaTrainer.__name__ == "CudaTrainer"
    assert pl.CudaStreamer.__name__ == "CudaStreamer"
    try:
        pl.NoSuchThing  # noqa: B018  (the access is the test)
    except AttributeError as err:
        assert "NoSuchThing" in str(err)
    else:
        raise AssertionError("unknown attribute did not raise")
