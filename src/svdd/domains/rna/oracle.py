"""Optimus 5-Prime: the mean-ribosome-load (MRL) predictor of Sample et al. 2019, ported to PyTorch.

Input: the 50-nt UTR followed by ``ATGG`` (first bases of the CDS), one-hot A, C, G, T
channels-last, ``x ∈ R^{54×4}``. Network (Keras, read from the HDF5 ``model_config``)::

    h1 = relu(conv1d(x; 40 filters, width 8, valid))        # 47 × 40
    h2 = relu(conv1d(h1; 40 filters, width 8, valid))       # 40 × 40
    z  = relu(W1 · flatten(h2) + b1)                        # flatten position-major, 1600 -> 40
    y  = w2 · z + b2                                        # standardised MRL (dropout is off at inference)

Keras convolutions are cross-correlations, like ``torch.nn.functional.conv1d``. Weights load
from either HDF5 layout with ``h5py`` (no TensorFlow): Keras 1 (``evolution_model.hdf5``, conv
kernels ``(8, 1, C_in, C_out)``, names ``*_W:0``/``*_b:0``) and Keras 2
(``retrained_evolution_model.hdf5``, ``(8, C_in, C_out)``, ``kernel:0``/``bias:0``). Dense
kernels are ``(in, out)`` in both. The output is MRL standardised by the authors' scaler (not
stored), and is used as the reward as is.

The weight files are third-party and not shipped: a directory is taken from ``oracle_dir=`` or
``$SVDD_UTR_ORACLE_DIR``; a missing file says where to get it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import DomainError
from .tokens import CDS_START, encode, one_hot

ENV_VAR = "SVDD_UTR_ORACLE_DIR"
ORACLE_FILES = {"mrl": "evolution_model.hdf5", "mrl-eval": "retrained_evolution_model.hdf5"}
SOURCE_HINT = ("download evolution_model.hdf5 and retrained_evolution_model.hdf5 from the public repository "
               "pjsample/human_5utr_modeling (modeling/saved_models/) and pass their directory with "
               f"--oracle-dir or ${ENV_VAR}")


class Optimus5Prime(nn.Module):
    """``forward(x (B, 54, 4) one-hot, channels last) -> (B,)`` standardised MRL."""

    def __init__(self, input_len: int = 54, filters: int = 40, width: int = 8, hidden: int = 40):
        super().__init__()
        self.input_len = input_len
        self.conv1 = nn.Conv1d(4, filters, width)
        self.conv2 = nn.Conv1d(filters, filters, width)
        self.dense1 = nn.Linear((input_len - 2 * (width - 1)) * filters, hidden)
        self.dense2 = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (self.input_len, 4):
            raise ValueError(f"Optimus5Prime expects (B, {self.input_len}, 4) one-hot, got {tuple(x.shape)}")
        h = F.relu(self.conv1(x.transpose(1, 2)))
        h = F.relu(self.conv2(h))                     # (B, C, P)
        h = h.transpose(1, 2).flatten(1)              # Keras Flatten: position-major
        return self.dense2(F.relu(self.dense1(h))).squeeze(-1)


def _layer_weights(group) -> tuple:
    """(kernel, bias) arrays of one Keras layer group, either layout."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    if len(names) != 2:
        raise DomainError(f"unexpected Keras weight layout in layer {group.name}: {names}")
    arrays = {n: group[n][()] for n in names}
    kernel = next(a for n, a in arrays.items() if n.endswith(("_W:0", "kernel:0")))
    bias = next(a for n, a in arrays.items() if n.endswith(("_b:0", "bias:0")))
    return kernel, bias


def load_optimus(path: str | Path, device: str | torch.device = "cpu") -> Optimus5Prime:
    """Read an Optimus 5-Prime Keras HDF5 file (Keras 1 or 2 layout) into ``Optimus5Prime`` (eval mode)."""
    try:
        import h5py
    except ModuleNotFoundError:
        raise DomainError("reading the MRL predictor needs h5py: pip install 'svdd[rna]'") from None
    path = Path(path)
    if not path.is_file():
        raise DomainError(f"MRL predictor {path.name} not found at {path}; {SOURCE_HINT}")
    model = Optimus5Prime()
    with h5py.File(path, "r") as f:
        weights = f["model_weights"] if "model_weights" in f else f
        (k1, b1), (k2, b2) = _layer_weights(weights["convolution1d_1"]), _layer_weights(weights["convolution1d_2"])
        (d1, c1), (d2, c2) = _layer_weights(weights["dense_1"]), _layer_weights(weights["dense_2"])
    state = {}
    for name, kernel, bias in (("conv1", k1, b1), ("conv2", k2, b2)):
        kernel = torch.as_tensor(kernel)
        if kernel.dim() == 4:                          # Keras 1: (width, 1, C_in, C_out)
            kernel = kernel[:, 0]
        state[f"{name}.weight"] = kernel.permute(2, 1, 0).contiguous()  # -> (C_out, C_in, width)
        state[f"{name}.bias"] = torch.as_tensor(bias)
    for name, kernel, bias in (("dense1", d1, c1), ("dense2", d2, c2)):
        state[f"{name}.weight"] = torch.as_tensor(kernel).t().contiguous()
        state[f"{name}.bias"] = torch.as_tensor(bias)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()


def resolve_oracle_dir(oracle_dir: Optional[str | Path] = None) -> Path:
    """``oracle_dir`` if given, else ``$SVDD_UTR_ORACLE_DIR``; a one-line DomainError otherwise."""
    chosen = oracle_dir or os.environ.get(ENV_VAR)
    if not chosen:
        raise DomainError(f"the MRL predictors are not bundled; {SOURCE_HINT}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DomainError(f"MRL predictor directory {path} does not exist; {SOURCE_HINT}")
    return path


def oracle_path(name: str, oracle_dir: Optional[str | Path] = None) -> Path:
    """Path of the weights file behind reward ``name`` (``mrl`` or ``mrl-eval``); a direct path
    to an ``.hdf5`` file is accepted as ``oracle_dir`` too."""
    if oracle_dir is not None and str(oracle_dir).endswith((".hdf5", ".h5")):
        path = Path(oracle_dir).expanduser()
    else:
        path = resolve_oracle_dir(oracle_dir) / ORACLE_FILES[name]
    if not path.is_file():
        raise DomainError(f"MRL predictor {path.name} not found in {path.parent}; {SOURCE_HINT}")
    return path


class MRLReward:
    """Reward ``r(x0)`` = predicted standardised MRL of the UTR ``x0`` followed by ``ATGG``.

    Accepts tokens (B, 50) (a mask token reads as ``N``, an all-zero row) or soft one-hot rows
    (B, 50, V≥4) — then it is differentiable in its input (DPS-style guidance)."""

    differentiable = True
    invalid_value = -10.0  # far below any predicted standardised MRL; used only when a call fails

    def __init__(self, model: Optimus5Prime, name: str = "mrl", batch_size: int = 4096):
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self._cds = one_hot(encode(CDS_START, seq_len=None))[0]

    def __call__(self, x0: Tensor) -> Tensor:
        device = next(self.model.parameters()).device
        oh = one_hot(x0).to(device=device, dtype=torch.float32)
        cds = self._cds.to(device).expand(oh.shape[0], -1, -1)
        inp = torch.cat([oh, cds], dim=1)
        if torch.is_grad_enabled() and inp.requires_grad:
            return self.model(inp).to(x0.device)
        with torch.no_grad():
            out = torch.cat([self.model(inp[i:i + self.batch_size]) for i in range(0, inp.shape[0], self.batch_size)]) \
                if inp.shape[0] else inp.new_zeros(0)
        return out.to(x0.device)


def mrl_reward(name: str = "mrl", oracle_dir: Optional[str | Path] = None,
               device: str | torch.device = "cpu") -> MRLReward:
    """The guidance (``mrl``, evolution_model) or evaluation (``mrl-eval``, retrained model) reward."""
    if name not in ORACLE_FILES:
        raise DomainError(f"unknown MRL predictor {name!r}; choose one of {sorted(ORACLE_FILES)}")
    return MRLReward(load_optimus(oracle_path(name, oracle_dir), device=device), name=name)
