"""Molecules as an acyclic skeleton of chain atoms and whole ring systems (the ``ring-systems``
representation).

A *ring system* is a maximal set of ring atoms joined by shared atoms (fused and spiro rings are
one system), closed under non-single bonds: an exocyclic ``=O`` or ``=C`` belongs to the ring it
hangs on. Every bond that leaves a system is then single, and because every cycle lies inside a
system, the molecule with each system contracted to one node is a **tree**. The representation
writes that tree as SELFIES (so any token sequence decodes to a molecule) in which each system is
**one token**, a placeholder atom whose valence is its number of attachment points::

    c1ccc(C(=O)NC2CC2)cc1   ->   skeleton  [1*]C(=O)N[2*]
                                 systems   [1*]c1ccccc1   [1*]C1CC1

A system token is RDKit's canonical SMILES of the system with its attachment points as isotope-
labelled dummies ``[1*]``, ``[2*]``, …; the label is the order in which the skeleton's SMILES
meets the neighbours (parent first, then branches, then the chain), which is also the order in
which the decoder's SMILES lists them, so para- and meta-substitution are different tokens and
no ring-closure index or Kekulé alternation is ever generated. Decoding attaches the i-th
neighbour of a placeholder to attachment point i, gives unused attachment points a hydrogen, and
reads a bond order above one into a system as a single bond (systems take single bonds only); a
ring closure that a sampler writes into the skeleton is dropped (``drop_ring_closures``).

In SELFIES a placeholder is an isotope-labelled atom of an element MOSES never uses
(``PLACEHOLDER_ELEMENTS``, valence 0 to 7): ``[12Ar]`` is system 11 of the vocabulary with two
attachment points. ``selfies``' bond constraints are process-wide; ``use_placeholder_constraints``
adds these elements to them and leaves every other element's constraint as it was.
"""

from __future__ import annotations

import re
from functools import lru_cache

PLACEHOLDER_ELEMENTS = ("He", "Ne", "Ar", "Kr", "Xe", "Rn", "Fr", "Ra")   # valence 0 .. 7
_VALENCE = {el: k for k, el in enumerate(PLACEHOLDER_ELEMENTS)}
_DUMMY = re.compile(r"\[(\d+)\*\]")
_PLACEHOLDER = re.compile(r"\[(\d+)(" + "|".join(PLACEHOLDER_ELEMENTS) + r")\]")


_BRANCH_OR_RING = re.compile(r"^\[[=#/\\\\]?(Branch|Ring)([123])\]$")


def drop_ring_closures(symbols: list[str]) -> list[str]:
    """SELFIES symbols with every ring closure (a ``[RingN]`` not read as an index, and its N index
    symbols) removed, so the decoded skeleton is a tree: the representation's only rings are its
    ring-system tokens. Index symbols after ``[BranchN]`` are kept, whatever they spell."""
    out, i = [], 0
    while i < len(symbols):
        m = _BRANCH_OR_RING.match(symbols[i])
        if m is None:
            out.append(symbols[i])
            i += 1
            continue
        n = int(m.group(2))
        if m.group(1) == "Branch":
            out.extend(symbols[i: i + 1 + n])
        i += 1 + n
    return out


def use_placeholder_constraints() -> None:
    """Give the placeholder elements their valences in ``selfies``' (process-wide) bond constraints."""
    import selfies as sf

    current = sf.get_semantic_constraints()
    if all(current.get(el) == k for el, k in _VALENCE.items()):
        return
    current.update(_VALENCE)
    sf.set_semantic_constraints(current)


def ring_systems(mol) -> list[frozenset[int]]:
    """Atom sets of the ring systems of an RDKit molecule (see the module docstring), in order of
    their lowest atom index."""
    from rdkit import Chem

    systems: list[set[int]] = []
    for ring in mol.GetRingInfo().AtomRings():
        s = set(ring)
        for t in [t for t in systems if t & s]:
            systems.remove(t)
            s |= t
        systems.append(s)
    changed = True
    while changed:
        changed = False
        owner = {a: i for i, s in enumerate(systems) for a in s}
        for b in mol.GetBonds():
            if b.GetBondType() == Chem.BondType.SINGLE:
                continue
            a, c = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            ra, rc = owner.get(a), owner.get(c)
            if ra is not None and rc is None:
                systems[ra].add(c)
            elif rc is not None and ra is None:
                systems[rc].add(a)
            elif ra is not None and rc is not None and ra != rc:
                systems[ra] |= systems[rc]
                systems[rc] = set()
            else:
                continue
            changed = True
            break
        systems = [s for s in systems if s]
    return sorted((frozenset(s) for s in systems), key=min)


def split_molecule(smiles: str) -> tuple[str, list[str]] | None:
    """``(skeleton, systems)``: the skeleton SMILES with system ``r`` written as the dummy
    ``[{r+1}*]`` and each system's token (module docstring). ``None`` if RDKit cannot parse the
    SMILES, the molecule has several fragments, or a system has more than 7 attachment points."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0 or len(Chem.GetMolFrags(mol)) != 1:
        return None
    Chem.RemoveStereochemistry(mol)
    systems = ring_systems(mol)
    if not systems:
        return Chem.MolToSmiles(mol), []
    owner = {a: r for r, s in enumerate(systems) for a in s}
    external = [b for b in mol.GetBonds()
                if owner.get(b.GetBeginAtomIdx(), -1) != owner.get(b.GetEndAtomIdx(), -1)]

    # the skeleton: each system contracted to a dummy atom that remembers the system's index
    rw = Chem.RWMol(mol)
    for atom in rw.GetAtoms():
        atom.SetIntProp("orig", atom.GetIdx())
    dummies = []
    for r in range(len(systems)):
        d = Chem.Atom(0)
        d.SetIsotope(r + 1)
        d.SetIntProp("orig", -1 - r)
        dummies.append(rw.AddAtom(d))
    seen = set()
    for b in external:
        ends = [dummies[owner[i]] if i in owner else i for i in (b.GetBeginAtomIdx(), b.GetEndAtomIdx())]
        key = tuple(sorted(ends))
        if key not in seen:
            seen.add(key)
            rw.AddBond(ends[0], ends[1], Chem.BondType.SINGLE)
    for a in sorted(owner, reverse=True):
        rw.RemoveAtom(a)
    skel = rw.GetMol()
    Chem.SanitizeMol(skel)
    skeleton = Chem.MolToSmiles(skel)
    order = [int(i) for i in skel.GetProp("_smilesAtomOutputOrder").strip("[],").split(",")]
    pos = {a: p for p, a in enumerate(order)}

    # attachment order of each system: its skeleton neighbours in the order the SMILES meets them
    bond_of = {}
    for b in external:
        a, c = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        for x, y in ((a, c), (c, a)):
            if x in owner:
                other = -1 - owner[y] if y in owner else y
                bond_of[(owner[x], other)] = b.GetIdx()
    label: dict[tuple[int, int], int] = {}   # (bond index, system) -> attachment label
    for atom in skel.GetAtoms():
        if atom.GetAtomicNum() != 0:
            continue
        r = -1 - atom.GetIntProp("orig")
        nbrs = sorted(atom.GetNeighbors(), key=lambda n: pos[n.GetIdx()])
        if len(nbrs) >= len(PLACEHOLDER_ELEMENTS):
            return None
        for i, n in enumerate(nbrs):
            label[(bond_of[(r, n.GetIntProp("orig"))], r)] = i + 1

    # the systems' tokens: cut every external bond, the dummy on a system's side carries its label
    if not external:   # the molecule is one ring system
        return skeleton, [Chem.MolToSmiles(mol)]
    bonds = [b.GetIdx() for b in external]
    labels = []
    for b in external:
        a, c = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        # first: the dummy that replaces the begin atom (it hangs on the end atom), then the other
        labels.append((label.get((b.GetIdx(), owner.get(c, -1)), 0), label.get((b.GetIdx(), owner.get(a, -1)), 0)))
    cut = Chem.FragmentOnBonds(mol, bonds, addDummies=True, dummyLabels=labels)
    tokens = [""] * len(systems)
    mapping: list = []
    for frag, atoms in zip(Chem.GetMolFrags(cut, asMols=True, fragsMolAtomMapping=mapping), mapping):
        real = [a for a in atoms if a < mol.GetNumAtoms()]
        if real[0] in owner:
            tokens[owner[real[0]]] = Chem.MolToSmiles(frag)
    return skeleton, tokens


def attachment_count(token: str) -> int:
    """Number of attachment points of a system token (its dummies)."""
    return len(_DUMMY.findall(token))


def placeholder(j: int, token: str) -> str:
    """The SELFIES placeholder of vocabulary system ``j`` (0-based): ``[{j+1}{El}]``, ``El`` of its valence."""
    return f"[{j + 1}{PLACEHOLDER_ELEMENTS[attachment_count(token)]}]"


def to_placeholders(skeleton: str, systems: list[str], index: dict[str, int]) -> str:
    """The skeleton SMILES with system ``r`` replaced by its placeholder atom (vocabulary ``index``)."""
    def sub(m):
        token = systems[int(m.group(1)) - 1]
        return placeholder(index[token], token)

    return _DUMMY.sub(sub, skeleton)


@lru_cache(maxsize=8192)
def _system_mol(token: str):
    from rdkit import Chem

    return Chem.MolFromSmiles(token)


def assemble(placeholder_smiles: str, systems: list[str] | tuple[str, ...]) -> str:
    """The molecule of a decoded skeleton: every placeholder ``[{j}{El}]`` replaced by system token
    ``systems[j-1]``, its i-th neighbour (in SMILES order) bonded to attachment point i with a single
    bond, unused attachment points capped with hydrogen. Canonical SMILES, or ``""`` if it fails."""
    from rdkit import Chem

    if not placeholder_smiles:
        return ""
    if not _PLACEHOLDER.search(placeholder_smiles):
        mol = Chem.MolFromSmiles(placeholder_smiles)
        return Chem.MolToSmiles(mol) if mol is not None else ""
    skel = Chem.MolFromSmiles(placeholder_smiles, sanitize=False)
    if skel is None:
        return ""
    rw = Chem.RWMol(skel)
    placeholders = [a.GetIdx() for a in skel.GetAtoms() if a.GetSymbol() in _VALENCE]
    is_placeholder = set(placeholders)
    bond_map: dict[frozenset, int] = {}   # skeleton bond -> the atom-map number molzip joins it by
    parts = []
    for p in placeholders:
        atom = skel.GetAtomWithIdx(p)
        j = atom.GetIsotope()
        if not 1 <= j <= len(systems):
            return ""
        frag = Chem.RWMol(_system_mol(systems[j - 1]))
        nbrs = sorted(n.GetIdx() for n in atom.GetNeighbors())
        points = {d.GetIsotope(): d.GetIdx() for d in frag.GetAtoms() if d.GetAtomicNum() == 0}
        if len(nbrs) > len(points):
            return ""
        for i, n in enumerate(nbrs, start=1):
            key = frozenset((p, n))
            if key not in bond_map:
                bond_map[key] = len(bond_map) + 1
                if n not in is_placeholder:   # a chain atom: it gets the dummy that molzip joins
                    rw.RemoveBond(p, n)
                    d = rw.AddAtom(Chem.Atom(0))
                    rw.GetAtomWithIdx(d).SetAtomMapNum(bond_map[key])
                    rw.AddBond(n, d, Chem.BondType.SINGLE)
            frag.GetAtomWithIdx(points[i]).SetAtomMapNum(bond_map[key])
            frag.GetAtomWithIdx(points[i]).SetIsotope(0)
        for i in sorted((i for i in points if i > len(nbrs)), key=lambda i: -points[i]):
            d = frag.GetAtomWithIdx(points[i])
            host = d.GetNeighbors()[0]
            host.SetNumExplicitHs(host.GetNumExplicitHs() + 1)
            frag.RemoveAtom(points[i])
        parts.append(frag.GetMol())
    for p in sorted(placeholders, reverse=True):
        rw.RemoveAtom(p)
    combined = rw.GetMol()
    for part in parts:
        combined = Chem.CombineMols(combined, part)
    try:
        mol = Chem.molzip(combined)
        Chem.SanitizeMol(mol)
        out = Chem.MolToSmiles(mol)
    except Exception:   # RDKit raises several types for unsanitisable molecules
        return ""
    return out if Chem.MolFromSmiles(out) is not None else ""
