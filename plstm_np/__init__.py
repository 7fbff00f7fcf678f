"""plstm_np: the Phased LSTM in NumPy, with hand-derived BPTT and kernels that skip closed neurons.

Neil, Pfeiffer & Liu, "Phased LSTM: Accelerating Recurrent Network Training for Long or
Event-based Sequences", NIPS 2016. See the README for a tour and DESIGN notes for the maths.
"""
from .backends import BackendUnavailableError, get_backend
from .dataset import Dataset
from .gradcheck import GradCheckReport, check_gradients, numerical_gradient, relative_error
from .layers import LSTM, PhasedLSTM
from .time_gate import kink_distance, phase, time_gate, time_gate_with_grads

__version__ = "0.1.0"
