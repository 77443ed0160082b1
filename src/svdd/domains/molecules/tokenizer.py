"""Tokenizers for masked diffusion over molecules: SELFIES (``SelfiesTokenizer``), SELFIES with
byte-pair-merged fragment tokens (``SelfiesBpeTokenizer``) and aromatic SMILES
(``SmilesTokenizer``, regex atom tokens); the last two are described at their classes.

SELFIES: a SMILES string is converted to SELFIES (Krenn et al. 2020), split into its bracket tokens and
mapped to ids over a fixed vocabulary::

    id 0            [PAD]  end-of-sequence / padding (the model learns it; decoding drops it)
    ids 1 .. V-2    SELFIES tokens seen in the training set (sorted)
    id V-1          [MASK] the absorbing state of the diffusion (never in a clean sequence)

Every sequence has exactly ``max_len`` tokens (the real tokens, then ``[PAD]`` to the end).
Because every SELFIES string decodes to a valid molecule, decoding any id sequence gives a
SMILES string (possibly empty, which counts as invalid).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..base import DomainError

PAD = "[PAD]"
MASK = "[MASK]"


def _selfies():
    try:
        import selfies
    except ModuleNotFoundError:
        raise DomainError("the molecules domain needs the 'selfies' package: run pip install 'svdd[molecules]'") from None
    return selfies


class _Vocabulary:
    """What both tokenizers share: ``[PAD]`` (id 0, also end of sequence) + tokens + ``[MASK]``
    (last id), fixed length ``max_len``, JSON persistence, padding and decoding of id rows."""

    label = "token"

    def __init__(self, tokens: Sequence[str], max_len: int):
        tokens = list(tokens)
        if tokens[0] != PAD or tokens[-1] != MASK or len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary must start with [PAD], end with [MASK] and have no duplicates")
        self.tokens = tokens
        self.max_len = int(max_len)
        self.index = {tok: i for i, tok in enumerate(tokens)}
        self.pad_id = 0
        self.mask_id = len(tokens) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def save(self, path: str | Path) -> None:
        from ...runfolder import atomic_write_json

        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path):
        meta = json.loads(Path(path).read_text())
        return cls(meta["tokens"], meta["max_len"])

    def _ids(self, toks: Sequence[str]) -> list[int]:
        """Ids of ``toks`` padded to ``max_len``; unknown tokens or a too long molecule: DomainError."""
        unknown = sorted({t for t in toks if t not in self.index or t in (PAD, MASK)})
        if unknown:
            raise DomainError(f"{self.label} token(s) {unknown} are not in the model's vocabulary; "
                              "the molecule contains atoms or charges the model never saw")
        if len(toks) > self.max_len:
            raise DomainError(f"molecule has {len(toks)} {self.label} tokens; the model handles at most {self.max_len}")
        return [self.index[t] for t in toks] + [self.pad_id] * (self.max_len - len(toks))

    def _join(self, ids: Sequence[int]) -> str:
        """Drop [PAD] (and any stray [MASK]) and join the remaining tokens."""
        return "".join(self.tokens[i] for i in ids if i != self.pad_id and i != self.mask_id)

    def decode(self, x: Tensor | np.ndarray) -> list[str]:
        """Token ids ``(B, L)`` (or one row) -> SMILES strings (see ``decode_one``)."""
        rows = x.tolist() if hasattr(x, "tolist") else list(x)
        if rows and isinstance(rows[0], int):
            rows = [rows]
        return [self.decode_one(r) for r in rows]


class SelfiesTokenizer(_Vocabulary):
    label = "SELFIES"

    # -- construction / persistence -------------------------------------------------------------
    @classmethod
    def build(cls, selfies_strings: Iterable[str], max_len: int) -> "SelfiesTokenizer":
        sf = _selfies()
        alphabet: set[str] = set()
        for s in selfies_strings:
            alphabet.update(sf.split_selfies(s))
        alphabet -= {PAD, MASK}
        return cls([PAD, *sorted(alphabet), MASK], max_len)

    def to_dict(self) -> dict:
        return {"type": "selfies", "tokens": self.tokens, "max_len": self.max_len}

    # -- encoding ------------------------------------------------------------------------------
    def smiles_to_selfies(self, smiles: str) -> str:
        sf = _selfies()
        try:
            out = sf.encoder(smiles)
        except Exception:  # selfies.EncoderError and RDKit-unrelated parse failures
            out = None
        if not out:
            raise DomainError(f"cannot encode SMILES {smiles!r} as SELFIES; check that it is a valid molecule")
        return out

    def encode_selfies(self, selfies_string: str) -> list[int]:
        return self._ids(list(_selfies().split_selfies(selfies_string)))

    def encode(self, smiles: str | Sequence[str]) -> Tensor:
        """SMILES (one or a list) -> token ids ``(L,)`` or ``(B, L)`` long."""
        if isinstance(smiles, str):
            return torch.tensor(self.encode_selfies(self.smiles_to_selfies(smiles)), dtype=torch.long)
        return torch.tensor([self.encode_selfies(self.smiles_to_selfies(s)) for s in smiles], dtype=torch.long)

    # -- decoding ------------------------------------------------------------------------------
    def ids_to_selfies(self, ids: Sequence[int]) -> str:
        """Drop [PAD] (and any stray [MASK]) and join the remaining tokens."""
        return self._join(ids)

    def decode_one(self, ids: Sequence[int]) -> str:
        sf = _selfies()
        try:
            return sf.decoder(self.ids_to_selfies(ids)) or ""
        except Exception:
            return ""   # "" when nothing decodes


# -- aromatic SMILES ------------------------------------------------------------------------------
# Schwaller et al. 2019 (Molecular Transformer): one token per bracket atom, two-letter halogen,
# organic-subset atom (aromatic lower case included), bond, branch parenthesis or ring-closure digit.
SMILES_REGEX = (r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|"
                r"\%[0-9]{2}|[0-9])")


def _rdkit_chem():
    try:
        from rdkit import Chem
    except ModuleNotFoundError:
        raise DomainError("the molecules domain needs RDKit: run pip install 'svdd[molecules]'") from None
    return Chem


def split_smiles(smiles: str) -> list[str]:
    """Regex tokens of a SMILES string; raises ``DomainError`` if the tokens do not spell it back."""
    import re

    toks = re.findall(SMILES_REGEX, smiles)
    if "".join(toks) != smiles:
        raise DomainError(f"SMILES {smiles!r} has characters the SMILES tokenizer does not know")
    return toks


def smiles_variant(smiles: str, random_seed: int | None = None) -> str:
    """RDKit's canonical aromatic SMILES of a molecule, or (``random_seed`` given) a randomised
    SMILES of it: a random atom order, still aromatic, the same molecule (Bjerrum 2017)."""
    Chem = _rdkit_chem()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise DomainError(f"cannot parse SMILES {smiles!r}; check that it is a valid molecule")
    if random_seed is None:
        return Chem.MolToSmiles(mol)
    import numpy as _np

    order = _np.random.default_rng(random_seed).permutation(mol.GetNumAtoms()).tolist()
    return Chem.MolToSmiles(Chem.RenumberAtoms(mol, order), canonical=False)


class SmilesTokenizer(_Vocabulary):
    """Aromatic SMILES, atom-level regex tokens (``SMILES_REGEX``), fixed length::

        id 0            [PAD]  end-of-sequence / padding (decoding drops it)
        ids 1 .. V-2    SMILES tokens seen in the training set (sorted)
        id V-1          [MASK] the absorbing state

    ``encode`` writes RDKit's canonical SMILES, so aromatic rings are single tokens (``c``,
    ``n``, ``[nH]``) and no Kekulé alternation has to be generated. Unlike SELFIES, a sampled
    sequence may spell an invalid SMILES (unbalanced ring digits or brackets, wrong valence):
    ``decode`` returns the string as written and validity is RDKit's judgement."""

    kind = "smiles"
    label = "SMILES"

    @classmethod
    def build(cls, smiles_strings: Iterable[str], max_len: int) -> "SmilesTokenizer":
        alphabet: set[str] = set()
        for s in smiles_strings:
            alphabet.update(split_smiles(s))
        return cls([PAD, *sorted(alphabet - {PAD, MASK}), MASK], max_len)

    def to_dict(self) -> dict:
        return {"type": "smiles", "regex": SMILES_REGEX, "tokens": self.tokens, "max_len": self.max_len}

    def encode_string(self, smiles: str) -> list[int]:
        """Ids of a SMILES string exactly as written (no canonicalisation)."""
        return self._ids(split_smiles(smiles))

    def encode(self, smiles: str | Sequence[str]) -> Tensor:
        """SMILES (one or a list) -> ids of the canonical aromatic SMILES, ``(L,)`` or ``(B, L)``."""
        if isinstance(smiles, str):
            return torch.tensor(self.encode_string(smiles_variant(smiles)), dtype=torch.long)
        return torch.tensor([self.encode_string(smiles_variant(s)) for s in smiles], dtype=torch.long)

    def decode_one(self, ids: Sequence[int]) -> str:
        """The SMILES as written (RDKit may reject it)."""
        return self._join(ids)


# -- SELFIES with merged fragment tokens ----------------------------------------------------------
def learn_bpe_merges(sequences: Iterable[Sequence[str]], num_merges: int) -> list[tuple[str, str]]:
    """Byte-pair encoding (Sennrich et al. 2016) over symbol sequences: repeatedly merge the most
    frequent adjacent pair into one symbol, ``num_merges`` times (fewer if no pair occurs twice).
    Ties go to the pair that sorts first, so the merges are a function of the data alone."""
    from collections import Counter, defaultdict

    words = [list(w) for w in sequences]
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            counts[pair] += 1
            where[pair].add(i)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges and counts:
        best_n = max(counts.values())
        if best_n < 2:
            break
        pair = min(p for p, n in counts.items() if n == best_n)
        merged = pair[0] + pair[1]
        merges.append(pair)
        for i in sorted(where.pop(pair, ())):
            w = words[i]
            for p in zip(w, w[1:]):
                counts[p] -= 1
                if counts[p] == 0:
                    del counts[p]
            words[i] = w = _merge_pair(w, pair, merged)
            for p in zip(w, w[1:]):
                counts[p] += 1
                where[p].add(i)
        counts.pop(pair, None)
    return merges


def _merge_pair(symbols: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


class SelfiesBpeTokenizer(SelfiesTokenizer):
    """SELFIES whose frequent runs of symbols are merged into one token by byte-pair encoding::

        id 0            [PAD]
        ids 1 .. B      the SELFIES symbols of the training set (sorted)
        ids B+1 ..      merged tokens, in merge order (e.g. benzene, [C][=C][C][=C][C][=C][Ring1][=Branch1])
        id V-1          [MASK]

    A token is a string of whole SELFIES symbols, so any id sequence still joins into a SELFIES
    string and decodes to a valid molecule. What changes is what the model has to get right: a
    common ring, with its alternating double bonds and its ring-closure index, is one token
    instead of eight positions that must agree (docs/molecules.md, "Representation"), and
    sequences are about three times shorter. ``encode`` applies the merges in rank order, as
    BPE does."""

    label = "SELFIES-BPE"

    def __init__(self, tokens: Sequence[str], max_len: int, merges: Sequence[Sequence[str]]):
        super().__init__(tokens, max_len)
        self.merges = [tuple(m) for m in merges]
        self.rank = {m: r for r, m in enumerate(self.merges)}
        missing = [a + b for a, b in self.merges if a + b not in self.index]
        if missing:
            raise ValueError(f"merged tokens {missing[:3]} are not in the vocabulary")

    @classmethod
    def build(cls, selfies_strings: Iterable[str], max_len: int, vocab_size: int = 256,
              num_learn: int | None = None) -> "SelfiesBpeTokenizer":
        """Symbols of all ``selfies_strings``; merges learned on the first ``num_learn`` of them
        until the vocabulary (with [PAD] and [MASK]) has ``vocab_size`` ids."""
        sf = _selfies()
        seqs = [list(sf.split_selfies(s)) for s in selfies_strings]
        base = sorted({t for q in seqs for t in q} - {PAD, MASK})
        merges = learn_bpe_merges(seqs[:num_learn] if num_learn else seqs, vocab_size - 2 - len(base))
        return cls([PAD, *base, *(a + b for a, b in merges), MASK], max_len, merges)

    @classmethod
    def load(cls, path: str | Path):
        meta = json.loads(Path(path).read_text())
        return cls(meta["tokens"], meta["max_len"], meta["merges"])

    def to_dict(self) -> dict:
        return {"type": "selfies-bpe", "tokens": self.tokens, "merges": [list(m) for m in self.merges],
                "max_len": self.max_len}

    def split(self, selfies_string: str) -> list[str]:
        """The merged tokens of a SELFIES string: the lowest-ranked adjacent pair is merged, until none is left."""
        symbols = list(_selfies().split_selfies(selfies_string))
        while len(symbols) > 1:
            ranked = [(self.rank.get(p, len(self.rank)), j) for j, p in enumerate(zip(symbols, symbols[1:]))]
            r, _ = min(ranked)
            if r == len(self.rank):
                break
            symbols = _merge_pair(symbols, self.merges[r], self.merges[r][0] + self.merges[r][1])
        return symbols

    def encode_selfies(self, selfies_string: str) -> list[int]:
        return self._ids(self.split(selfies_string))


# -- whole ring systems as tokens -----------------------------------------------------------------
class RingSystemTokenizer(SelfiesTokenizer):
    """The ``ring-systems`` representation (``ringsys``): an acyclic SELFIES skeleton in which every
    ring system of the vocabulary is one placeholder token::

        id 0            [PAD]
        ids 1 .. B      the skeleton's SELFIES symbols (chain atoms, branches; no ring closures)
        ids B+1 .. V-2  one placeholder per ring system, ``[{j}{El}]`` = ``systems[j-1]`` (``El``: its valence)
        id V-1          [MASK]

    A benzene ring with its substitution pattern, a piperazine or an indole is a single token, so
    no ring-closure index, ring size or Kekulé alternation is generated, and a molecule cannot
    contain a ring that is not in the vocabulary. Any id sequence decodes to a molecule (SELFIES
    keeps the skeleton's valences, the placeholder's valence is its number of attachment points);
    a molecule whose ring systems are not all in ``systems`` cannot be encoded (``DomainError``)."""

    label = "ring-system SELFIES"

    def __init__(self, tokens: Sequence[str], max_len: int, systems: Sequence[str]):
        super().__init__(tokens, max_len)
        self.systems = list(systems)
        self.system_index = {t: j for j, t in enumerate(self.systems)}
        missing = [p for p in self.placeholders_of(self.systems) if p not in self.index]
        if missing:
            raise ValueError(f"placeholder tokens {missing[:3]} are not in the vocabulary")

    @staticmethod
    def split_all(smiles_strings: Iterable[str]) -> list:
        """``ringsys.split_molecule`` of each SMILES (``None`` where it cannot be split)."""
        from .ringsys import split_molecule

        return [split_molecule(s) for s in smiles_strings]

    @classmethod
    def build(cls, splits: Sequence, max_len: int, num_systems: int = 4096) -> "RingSystemTokenizer":
        """Vocabulary from ``split_all`` output: the ``num_systems`` most frequent ring systems (ties by
        SMILES) and the SELFIES symbols of the skeletons whose systems are all among them."""
        from collections import Counter

        from .ringsys import to_placeholders, use_placeholder_constraints

        use_placeholder_constraints()
        counts = Counter(t for sp in splits if sp for t in sp[1])
        systems = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:num_systems]]
        index = {t: j for j, t in enumerate(systems)}
        sf = _selfies()
        symbols: set[str] = set()
        for sp in splits:
            if sp and all(t in index for t in sp[1]):
                symbols.update(sf.split_selfies(sf.encoder(to_placeholders(sp[0], sp[1], index))))
        placeholders = cls.placeholders_of(systems)
        base = sorted(symbols - set(placeholders) - {PAD, MASK})
        return cls([PAD, *base, *placeholders, MASK], max_len, systems)

    @staticmethod
    def placeholders_of(systems: Sequence[str]) -> list[str]:
        """The placeholder symbol of each system (``ringsys.placeholder``)."""
        from .ringsys import placeholder

        return [placeholder(j, t) for j, t in enumerate(systems)]

    @classmethod
    def load(cls, path: str | Path):
        meta = json.loads(Path(path).read_text())
        return cls(meta["tokens"], meta["max_len"], meta["systems"])

    def to_dict(self) -> dict:
        return {"type": "ring-systems", "tokens": self.tokens, "systems": self.systems, "max_len": self.max_len}

    def split_to_selfies(self, split) -> str:
        """The SELFIES string of one ``split_molecule`` result; ``DomainError`` if a system is unknown."""
        from .ringsys import to_placeholders, use_placeholder_constraints

        unknown = sorted({t for t in split[1] if t not in self.system_index})
        if unknown:
            raise DomainError(f"ring system(s) {unknown[:3]} are not in the model's vocabulary of "
                              f"{len(self.systems)} ring systems")
        use_placeholder_constraints()
        return _selfies().encoder(to_placeholders(split[0], split[1], self.system_index))

    def smiles_to_selfies(self, smiles: str) -> str:
        from .ringsys import split_molecule

        sp = split_molecule(smiles)
        if sp is None:
            raise DomainError(f"cannot split SMILES {smiles!r} into ring systems; check that it is one valid molecule")
        return self.split_to_selfies(sp)

    def decode_one(self, ids: Sequence[int]) -> str:
        from .ringsys import assemble, drop_ring_closures, use_placeholder_constraints

        use_placeholder_constraints()
        sf = _selfies()
        try:
            symbols = drop_ring_closures(list(sf.split_selfies(self.ids_to_selfies(ids))))
            skeleton = sf.decoder("".join(symbols)) or ""
        except Exception:
            return ""
        return assemble(skeleton, self.systems)


TOKENIZERS = {"selfies": SelfiesTokenizer, "selfies-bpe": SelfiesBpeTokenizer, "smiles": SmilesTokenizer,
              "ring-systems": RingSystemTokenizer}


def load_tokenizer_file(path: str | Path):
    """The tokenizer saved in ``path`` (a ``tokenizer.json``), by its ``type``."""
    meta = json.loads(Path(path).read_text())
    kind = meta.get("type", "selfies")
    if kind not in TOKENIZERS:
        raise DomainError(f"{path}: unknown tokenizer type {kind!r}; expected one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind].load(path)
