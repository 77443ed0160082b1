"""Molecules: masked diffusion over SELFIES tokens, chemistry and docking rewards.

The shipped model ``moses-selfies`` is a ``MaskedTransformer`` trained with the MDLM NELBO on
MOSES (ZINC-derived) SMILES written as SELFIES (``scripts/train_molecules.py``); a sample is a
sequence of ``max_len`` token ids that decodes (SELFIES -> SMILES) to a molecule. Rewards take
token ids, decode them and score the molecules (``qed``, ``sa``, ``logp``,
``docking:<target>``); invalid molecules get each reward's invalid value.

    from svdd.domains import get_domain
    dom = get_domain("molecules")
    process = dom.load_process()                       # MaskedProcess, CPU
    reward = dom.make_reward("qed")                    # or "docking:parp1+0.5*qed"
    result = svdd.sample(process, reward, method="svdd-pm", num_samples=32, num_steps=32,
                         num_candidates=8, generator=torch.Generator().manual_seed(0))
    dom.decode(result.x0)                              # SMILES
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..base import Domain, DomainError
from .chem import PROPERTIES, PropertyReward, canonical_smiles, mol_from_smiles
from .fetch import prefetch
from .tokenizer import SelfiesBpeTokenizer, SelfiesTokenizer, SmilesTokenizer, load_tokenizer_file

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_NAME = "moses-selfies"
MODEL_DIR = ASSETS / MODEL_NAME
# aromatic SMILES tokens (issue 18; docs/molecules.md "Representation"), resumable training
SMILES_MODEL_NAME = "moses-smiles"
# SELFIES with byte-pair-merged fragment tokens (issue 18; docs/molecules.md "Fragment tokens")
BPE_MODEL_NAME = "moses-selfies-bpe"
# an acyclic SELFIES skeleton with one token per ring system (issue 18; docs/molecules.md "Ring systems")
RINGS_MODEL_NAME = "moses-ring-systems"
DEFAULT_NUM_STEPS = 32
_ACTIVE: dict = {}   # the tokenizer of the model loaded last (what decode and rewards default to)


@lru_cache(maxsize=4)
def load_tokenizer(path: Optional[str] = None):
    """The default model's tokenizer (or the one in ``path``/tokenizer.json, SELFIES or SMILES)."""
    folder = Path(path) if path else MODEL_DIR
    return load_tokenizer_file(folder / "tokenizer.json")


def active_tokenizer():
    """The tokenizer of the molecule model loaded last in this process (the default model's if none)."""
    return _ACTIVE.get("tokenizer") or load_tokenizer()


def load_model(device: str = "cpu", path: Optional[str] = None, **_):
    """``MaskedProcess`` of the shipped (or a ``path``) model; ``process.tokenizer`` decodes.
    ``decode`` and the rewards then default to this model's tokenizer."""
    from ...nn import load_model as load_weights
    from ...process.masked import MaskedProcess

    folder = Path(path) if path else MODEL_DIR
    if not (folder / "model.safetensors").exists():
        raise DomainError(f"no molecule model weights in {folder}; train them with scripts/train_molecules.py "
                          "or reinstall svdd")
    meta = json.loads((folder / "config.json").read_text())
    tok = load_tokenizer(str(folder) if path else None)
    model = load_weights(folder, device=device)
    process = MaskedProcess(model, tok.max_len, tok.vocab_size, tok.mask_id, schedule=meta.get("schedule", "loglinear"),
                            device=device, draw=meta.get("draw", "race"))
    process.tokenizer = tok
    _ACTIVE["tokenizer"], _ACTIVE["folder"] = tok, folder
    return process


def _load_named(name: str):
    def loader(device: str = "cpu", **options):
        return load_model(device=device, path=str(ASSETS / name), **options)

    loader.__doc__ = f"``MaskedProcess`` of the shipped {name!r} model."
    return loader


def decode(x0: Tensor, tokenizer=None) -> list[str]:
    """Token ids -> canonical SMILES (the raw decoded string when RDKit rejects it; "" if empty),
    with ``tokenizer`` or the tokenizer of the model loaded last."""
    raw = (tokenizer or active_tokenizer()).decode(x0)
    return [canonical_smiles(s) or s for s in raw]


def sample_columns(x0: Tensor, decoded: list[str], process=None) -> dict[str, list]:
    """Per-molecule columns for samples.csv: validity and common properties (blank if invalid)."""
    from rdkit.Chem import Descriptors

    from .chem import logp, qed, sa_normalised

    cols: dict[str, list] = {"valid": [], "qed": [], "sa": [], "logp": [], "mol_weight": []}
    for s in decoded:
        mol = mol_from_smiles(s)
        cols["valid"].append(mol is not None)
        for key, fn in (("qed", qed), ("sa", sa_normalised), ("logp", logp), ("mol_weight", Descriptors.MolWt)):
            try:
                cols[key].append(round(float(fn(mol)), 4) if mol is not None else None)
            except Exception:
                cols[key].append(None)
    return cols


def set_metrics(x0: Tensor, decoded: list[str], process=None, **options) -> dict:
    """Validity, uniqueness, novelty, internal diversity, FCD (>= 256 valid), NELBO."""
    from .metrics import molecule_metrics

    return molecule_metrics(decoded, x0=x0, process=process, **options)


def write_files(out_dir, x0: Tensor, decoded: list[str], rewards, info: Optional[dict] = None) -> list[Path]:
    """``molecules.sdf``: valid molecules with SMILES, reward and index; docked 3D poses (and
    the Vina score) when a docking reward docked them — in this process, or in worker processes
    (``--reward-workers``, ``--backend process``: read back from the docking SQLite cache) —,
    2D coordinates otherwise."""
    from .docking import pose_sources

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "molecules.sdf"
    dockers = pose_sources((info or {}).get("reward"), decoded)
    rewards = torch.as_tensor(rewards).tolist() if rewards is not None else [None] * len(decoded)
    from ...runfolder import atomic_path

    with atomic_path(path) as tmp:
        _write_sdf(tmp, decoded, rewards, dockers)
    return [path]


def _write_sdf(path, decoded, rewards, dockers) -> None:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    writer = Chem.SDWriter(str(path))
    try:
        for i, (s, r) in enumerate(zip(decoded, rewards)):
            mol = mol_from_smiles(s)
            if mol is None:
                continue
            posed = None
            for d in dockers:
                block = d.pose(s)
                if block:
                    posed = Chem.MolFromMolBlock(block, removeHs=False)
                    if posed is not None:
                        score = d.memory.get(s, (None,))[0]
                        posed.SetProp("docking_target", d.target)
                        if score is not None:
                            posed.SetDoubleProp("vina_score", float(score))
                        break
            if posed is None:
                AllChem.Compute2DCoords(mol)
                posed = mol
            posed.SetProp("_Name", f"sample_{i}")
            posed.SetProp("smiles", s)
            posed.SetIntProp("index", i)
            if r is not None:
                posed.SetDoubleProp("reward", float(r))
            writer.write(posed)
    finally:
        writer.close()


# -- rewards ----------------------------------------------------------------------------------------
def _property_factory(name: str):
    def factory(arg: Optional[str] = None, tokenizer: Optional[SelfiesTokenizer] = None, **_):
        if arg:
            raise DomainError(f"reward {name!r} takes no argument (got {name}:{arg})")
        return PropertyReward(name, tokenizer or active_tokenizer())

    return factory


def _docking_factory(arg: Optional[str] = None, tokenizer: Optional[SelfiesTokenizer] = None, *,
                     exhaustiveness: Optional[int] = None, num_workers: Optional[int] = None,
                     timeout_s: Optional[float] = None, docking_seed: int = 0, **_):
    """``docking:<target>``; settings from keyword options, else the environment variables
    ``SVDD_DOCKING_EXHAUSTIVENESS`` (default 1), ``SVDD_DOCKING_WORKERS`` (default: CPU count, at
    most 8) and ``SVDD_DOCKING_TIMEOUT`` (seconds per ligand, default 120)."""
    import os

    from .docking import DockingReward, list_targets

    if not arg:
        raise DomainError(f"name a docking target, e.g. docking:parp1 (targets: {', '.join(list_targets())})")

    def env(name, cast, default):
        raw = os.environ.get(name)
        if raw is None:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise DomainError(f"{name}={raw!r} is not a valid {cast.__name__}") from None

    return DockingReward(arg, tokenizer or active_tokenizer(),
                         exhaustiveness=exhaustiveness or env("SVDD_DOCKING_EXHAUSTIVENESS", int, 1),
                         num_workers=num_workers or env("SVDD_DOCKING_WORKERS", int, None),
                         timeout_s=timeout_s or env("SVDD_DOCKING_TIMEOUT", float, 120.0), seed=docking_seed)


def _docking_description() -> str:
    from .docking import list_targets

    targets = list_targets()
    listed = ", ".join(targets) if targets else "none found: pip install 'svdd[molecules]' (dockstring receptors)"
    return ("AutoDock Vina docking score as max(-score, 0) kcal/mol (exhaustiveness 1, cached by canonical "
            f"SMILES); invalid 0. docking:<target>, targets: {listed}")


from .value import MoleculeValueNet, value_network  # noqa: E402  (registers the network for load_value)


def _surrogate_factory(arg: Optional[str] = None, device: str = "cpu", **_):
    """``surrogate:<qed|sa>``: a differentiable learned stand-in for the RDKit reward (for DPS), the one
    trained for the molecule model loaded last."""
    from .surrogate import SURROGATES, SurrogateReward, surrogate_home

    if arg not in SURROGATES:
        raise DomainError(f"name the surrogate's property, one of {', '.join(SURROGATES)} (e.g. surrogate:qed)")
    folder = Path(_ACTIVE.get("folder") or MODEL_DIR)
    path = surrogate_home(folder) / f"surrogate-{arg}"
    if not (path / "config.json").exists():
        raise DomainError(f"the molecule model in {folder.name!r} has no surrogate:{arg}; train one with python "
                          f"scripts/train_molecule_surrogates.py --model {folder.name}, or use svdd-pm with the "
                          f"RDKit reward {arg!r}")
    reward = SurrogateReward(arg, path=path, device=device)
    tok, config = active_tokenizer(), reward.net.config
    if (config["vocab_size"], config["seq_len"]) != (tok.vocab_size, tok.max_len):
        raise DomainError(f"surrogate:{arg} in {path} reads {config['vocab_size']} token ids of length "
                          f"{config['seq_len']}; the loaded model has {tok.vocab_size} ids of length {tok.max_len}. "
                          f"Retrain it with scripts/train_molecule_surrogates.py, or use svdd-pm with the RDKit "
                          f"reward {arg!r}")
    return reward


REWARDS = {name: (_property_factory(name), desc) for name, (_, _, desc) in PROPERTIES.items()}
REWARDS["docking"] = (_docking_factory, _docking_description())
REWARDS["surrogate"] = (_surrogate_factory, "differentiable CNN surrogate of qed or sa on token probabilities "
                        "(for DPS; trained on MOSES + model samples): surrogate:qed, surrogate:sa")

DOMAIN = Domain(
    name="molecules",
    description="small molecules: masked diffusion over SELFIES trained on MOSES (ZINC), RDKit and Vina rewards",
    models={MODEL_NAME: load_model, SMILES_MODEL_NAME: _load_named(SMILES_MODEL_NAME),
            BPE_MODEL_NAME: _load_named(BPE_MODEL_NAME), RINGS_MODEL_NAME: _load_named(RINGS_MODEL_NAME)},
    default_model=MODEL_NAME,
    rewards=REWARDS,
    default_reward="qed",
    default_num_steps=DEFAULT_NUM_STEPS,
    decode=decode,
    sample_columns=sample_columns,
    metrics=set_metrics,
    write_files=write_files,
    sample_column="smiles",
    prefetch=prefetch,
    # a key without a model name belongs to the default model only (Domain.shipped_value)
    extra={"values": {"qed": ASSETS / "value-qed", "sa": ASSETS / "value-sa",
                      **{f"{m}/{r}": ASSETS / m / f"value-{r}" for m in (BPE_MODEL_NAME, RINGS_MODEL_NAME)
                         for r in ("qed", "sa")}},
           "pyproject_extra": "molecules",
           "value_network": value_network},
)

__all__ = ["DOMAIN", "load_model", "load_tokenizer", "active_tokenizer", "decode", "SelfiesTokenizer",
           "SelfiesBpeTokenizer", "SmilesTokenizer", "PropertyReward", "MoleculeValueNet",
           "value_network"]
