"""Every knob of the compiled backends, in one place.

Kernels read these when they are first compiled (on first use of a backend, never at import
of ``plstm_np``). Environment variables set the defaults; code may change the attributes
before the first call of a backend.

- ``NUMBA_CACHE`` (``PLSTM_NP_NUMBA_CACHE``, default on): cache compiled CPU kernels on disk,
  so that a fresh process does not recompile them.
- ``NUMBA_FASTMATH`` (``PLSTM_NP_FASTMATH``, default off): LLVM fast-math; off keeps the CPU
  kernels within 1e-12 of the reference in float64.
- ``NUMBA_REASSOC`` (``PLSTM_NP_REASSOC``, default on): let LLVM reassociate the sums of
  the CPU kernels and fuse multiply-adds (the only fast-math flags they get, ``reassoc``
  and ``contract``), so that dot products are vectorised; results change at the rounding
  level only (within 1e-12 of the reference in float64). The phase keeps its exact
  rounding either way.
- ``NUMBA_PARALLEL`` (``PLSTM_NP_PARALLEL``, default on): parallel loops over the batch.
- ``NUM_THREADS`` (``PLSTM_NP_NUM_THREADS``, default: Numba's own): threads for those loops.
- ``SERIAL_BLAS`` (``PLSTM_NP_SERIAL_BLAS``, default on): while a dense CPU kernel runs,
  set the BLAS that Numba calls (SciPy's OpenBLAS) to one thread, and restore its count
  after: the kernels call BLAS from each of their own threads.
- ``CUDA_THREADS_PER_BLOCK`` (``PLSTM_NP_CUDA_TPB``, default 128): block size of the GPU
  kernels; the simulator tests patch it small so tiny problems span several blocks.
  The forward and backward use one block per sample, its threads sharing the neurons.
- ``CUDA_STREAM_THREADS_PER_BLOCK`` (``PLSTM_NP_CUDA_STREAM_TPB``, default 32): block size
  of batched streaming inference (one warp per event stream).
- ``CUDA_TILE`` (``PLSTM_NP_CUDA_TILE``, default 16): tile edge of the GPU weight-gradient
  product (blocks of CUDA_TILE x CUDA_TILE threads).
- ``CUDA_GEMM_TARGET_BLOCKS`` (``PLSTM_NP_CUDA_GEMM_BLOCKS``, default 1024): about how many
  blocks that product is split into over the (sample, step) rows.
- ``CUDA_LAUNCH``: the block shapes of the small GPU kernels (element-wise copies, the
  transposed weights, reductions, the read-out, the loss, Adam), by kernel name; a
  shape's first entry runs over the first grid axis.
"""
import os


def _flag(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _int(name, default):
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


NUMBA_CACHE = _flag("PLSTM_NP_NUMBA_CACHE", True)
NUMBA_FASTMATH = _flag("PLSTM_NP_FASTMATH", False)
NUMBA_REASSOC = _flag("PLSTM_NP_REASSOC", True)
NUMBA_PARALLEL = _flag("PLSTM_NP_PARALLEL", True)
NUM_THREADS = _int("PLSTM_NP_NUM_THREADS", None)
SERIAL_BLAS = _flag("PLSTM_NP_SERIAL_BLAS", True)
CUDA_THREADS_PER_BLOCK = _int("PLSTM_NP_CUDA_TPB", 128)
CUDA_STREAM_THREADS_PER_BLOCK = _int("PLSTM_NP_CUDA_STREAM_TPB", 32)
CUDA_TILE = _int("PLSTM_NP_CUDA_TILE", 16)
CUDA_GEMM_TARGET_BLOCKS = _int("PLSTM_NP_CUDA_GEMM_BLOCKS", 1024)
CUDA_LAUNCH = {
    "transpose_cat": (16, 16),  # (4H gate columns, D + H inputs)
    "reduce_part": (8, 32),  # (6 per-neuron gradient rows, H)
    "dx": (64, 2),  # (B * T rows, D inputs)
    "append_time": (64, 2),  # (B * T rows, D + 1 features)
    "last_state": (16, 16),  # (B, H)
    "readout": (32, 4),  # (B, C)
    "dense_grad": (16, 4),  # (H + 1, C)
    "cross_entropy": 64,  # B
    "adam": 128,  # parameter entries
}
