"""SVDD-MC value network for molecules: chemistry of the partial molecule, not raw tokens.

The value is ``v(x_t, t) ≈ E[r(x0) | x_t]`` under the pretrained model. A token transformer
fitted on a few thousand rollouts memorises their final molecules and does not generalise
(held-out corr ≈ 0 for QED; docs/molecules.md). A masked SELFIES sequence still decodes: drop
the ``[MASK]`` tokens and SELFIES' grammar gives a valid partial molecule. ``MoleculeValueNet``
reads that molecule's descriptors — the eight of QED (weight, logP, H-bond acceptors/donors,
polar surface, rotatable bonds, aromatic rings, structural alerts) and the structure terms of SA
(size, rings, sp3 fraction, stereocentres, spiro/bridgehead atoms, largest ring, charges) —
plus the token histogram and the fraction still masked, with ``t``, into an MLP. Like the
paper's graph-network value on the partial graph (arXiv 2408.08252 App. F), it needs no
denoiser call; the RDKit featurisation runs on the CPU and is cached by sequence.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ...nn.denoisers import timestep_embedding
from ..base import DomainError

NUM_DESCRIPTORS = 17
#                 MW    logP HBA  HBD  PSA   ROTB AROM ALERT heavy rings fsp3 stereo spiro bridge maxring charged valid
_SCALE = torch.tensor([500., 5., 10., 5., 150., 10., 4., 4., 40., 6., 1., 4., 2., 2., 10., 2., 1.])


def descriptors(smiles: str) -> list[float]:
    """The ``NUM_DESCRIPTORS`` features of one (partial) molecule; all zero if it does not parse."""
    from rdkit import Chem
    from rdkit.Chem import QED, rdMolDescriptors

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None or mol.GetNumAtoms() == 0:
        return [0.0] * NUM_DESCRIPTORS
    try:
        p = QED.properties(mol)
        qed_terms = [p.MW, p.ALOGP, p.HBA, p.HBD, p.PSA, p.ROTB, p.AROM, p.ALERTS]
    except Exception:          # QED's property code fails on a few exotic valences
        qed_terms = [0.0] * 8
    ring_info = mol.GetRingInfo()
    rings = ring_info.AtomRings()
    return qed_terms + [
        float(mol.GetNumHeavyAtoms()), float(len(rings)), float(rdMolDescriptors.CalcFractionCSP3(mol)),
        float(len(Chem.FindMolChiralCenters(mol, includeUnassigned=True, useLegacyImplementation=False))),
        float(rdMolDescriptors.CalcNumSpiroAtoms(mol)), float(rdMolDescriptors.CalcNumBridgeheadAtoms(mol)),
        float(max((len(r) for r in rings), default=0)),
        float(sum(1 for a in mol.GetAtoms() if a.GetFormalCharge() != 0)), 1.0]


class MoleculeValueNet(nn.Module):
    """(B, L) token ids (``[MASK]`` included) + t -> scalar, through the partial molecule's
    descriptors, the token histogram and the masked fraction."""

    def __init__(self, vocab_size: int, seq_len: int, hidden: int = 128, time_dim: int = 32,
                 cache_size: int = 300_000):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, hidden=hidden, time_dim=time_dim)
        self.vocab_size, self.time_dim = vocab_size, time_dim
        self.register_buffer("scale", _SCALE.clone(), persistent=False)
        d = NUM_DESCRIPTORS + vocab_size + time_dim
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = int(cache_size)
        self._tokenizer = None

    def _features(self, x: Tensor) -> Tensor:
        if self._tokenizer is None:   # the molecule model loaded last decodes (its ids are what x holds)
            from . import active_tokenizer

            tok = active_tokenizer()
            if (tok.vocab_size, tok.max_len) != (self.vocab_size, self.config["seq_len"]):
                raise DomainError(f"this value reads {self.vocab_size} token ids of length {self.config['seq_len']}; "
                                  f"the loaded molecule model has {tok.vocab_size} ids of length {tok.max_len}")
            self._tokenizer = tok
        rows = x.detach().to("cpu", torch.int64)
        keys = [r.numpy().tobytes() for r in rows]
        feats = []
        for key, row in zip(keys, rows):
            f = self._cache.get(key)
            if f is None:
                f = descriptors(self._tokenizer.decode_one(row.tolist()))
                self._cache[key] = f
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            feats.append(f)
        return torch.tensor(feats, dtype=torch.float32)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        device = self.scale.device
        desc = self._features(x).to(device) / self.scale
        hist = torch.nn.functional.one_hot(x.long().to(device), self.vocab_size).float().mean(1)
        h = torch.cat([torch.sign(desc) * torch.log1p(desc.abs()), hist,
                       timestep_embedding(t.to(device), self.time_dim)], dim=1)
        return self.net(h).squeeze(-1)


def value_network(process=None, hidden: int = 128) -> MoleculeValueNet:
    """The network ``svdd fit-value --domain molecules`` and ``svdd bench`` (``value: {fit}``) fit."""
    vocab = process.vocab_size if process is not None else 28
    seq_len = process.seq_len if process is not None else 48
    return MoleculeValueNet(vocab, seq_len, hidden=hidden)


def _register() -> None:
    from ...values.learned import register_value_network

    register_value_network(MoleculeValueNet)


_register()

__all__ = ["MoleculeValueNet", "value_network", "descriptors", "NUM_DESCRIPTORS"]
