"""The package itself: a light import, the lazy GPU names, the public API's presence."""
import subprocess
import sys

import plstm_np as pl


def test_import_loads_no_numba():
    code = "import sys, plstm_np; assert 'numba' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_classes_are_imported_lazily():
    assert pl.CudaTrainer.__name__ == "CudaTrainer"
    assert pl.CudaStreamer.__name__ == "CudaStreamer"
    try:
        pl.NoSuchThing
    except AttributeError as err:
        assert "NoSuchThing" in str(err)
    else:
        raise AssertionError("unknown attribute did not raise")
