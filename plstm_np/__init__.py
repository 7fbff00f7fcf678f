"""plstm_np: the Phased LSTM in NumPy, with hand-derived BPTT and kernels that skip closed neurons.

Neil, Pfeiffer & Liu, "Phased LSTM: Accelerating Recurrent Network Training for Long or
Event-based Sequences", NIPS 2016. The README gives a tour; the modules read like the paper:

- :mod:`plstm_np.time_gate`: the time gate (eq. 6) and its derivatives.
- :mod:`plstm_np.reference`: one layer's forward and hand-derived BPTT in NumPy.
- :mod:`plstm_np.layers`, :mod:`plstm_np.network`: layers, read-out, embedding, network.
- :mod:`plstm_np.gru`, :mod:`plstm_np.batchnorm`, :mod:`plstm_np.time_feature`,
  :mod:`plstm_np.bidirectional`: the Phased GRU and GRU, batch normalisation of sequences
  and the timestamp as a feature (the BN-LSTM), bidirectional layers.
- :mod:`plstm_np.losses`, :mod:`plstm_np.optim`: losses, Adam, clipping, constraints.
- :mod:`plstm_np.gradcheck`: gradient checking against central differences.
- :mod:`plstm_np.statistics`: confidence intervals of reported accuracies.
- :mod:`plstm_np.io`: save and load.
- :mod:`plstm_np.mnist`, :mod:`plstm_np.nmnist`, :mod:`plstm_np.event_camera`: the shipped
  digits, the N-MNIST reader, and an event-camera simulator that makes N-MNIST-like
  recordings from images.
"""
from . import mnist, nmnist, tasks
from .backends import BackendUnavailableError, get_backend
from .batchnorm import BatchNorm
from .bidirectional import Bidirectional
from .dataset import Dataset
from .gradcheck import GradCheckReport, check_gradients, numerical_gradient, relative_error
from .gru import GRU, PhasedGRU
from .io import load, load_checkpoint, save
from .layers import LSTM, PhasedLSTM
from .losses import mean_squared_error, softmax_cross_entropy
from .network import Dense, Embedding, Network
from .optim import Adam, clip_grad_norm
from .statistics import binomial_interval
from .tasks import TASKS, train_val_split
from .time_feature import TimeFeature
from .time_gate import kink_distance, phase, time_gate, time_gate_with_grads
from .training import train

__version__ = "0.1.0"

_LAZY = {"CudaTrainer": "backends.cuda.training", "CudaStreamer": "backends.cuda.training",
         "Stream": "streaming"}


def __getattr__(name):
    """Import the Numba-backed classes on first use, so that ``import plstm_np`` loads no Numba."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
