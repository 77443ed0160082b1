"""The Optimus 5-Prime port against the authors' own predictions, both HDF5 layouts, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from svdd.domains.base import DomainError
from svdd.domains.rna.oracle import ENV_VAR, Optimus5Prime, load_optimus, mrl_reward, oracle_path
from svdd.domains.rna.tokens import decode, encode, one_hot

ROOT = Path(__file__).resolve().parents[1]
UTR_DIR = Path(os.environ.get(ENV_VAR) or ROOT.parent / "shared" / "data" / "utr")
needs_oracle = pytest.mark.skipif(not (UTR_DIR / "evolution_model.hdf5").exists(),
                                  reason=f"Optimus 5-Prime weights not found in {UTR_DIR} "
                                         f"(set {ENV_VAR} to pjsample/human_5utr_modeling's modeling/saved_models)")




def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@needs_oracle
@pytest.mark.parametrize("name,column", [("mrl", "old_pred"), ("mrl-eval", "retrained_pred")])
def test_port_reproduces_published_predictions(name, column):
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(UTR_DIR / "snv_phenotype_log_diff.csv", usecols=["utr", column, "hrl"])
    reward = mrl_reward(name, UTR_DIR)
    pred = reward(encode(df["utr"].tolist()))
    assert pred.shape == (len(df),)
    assert pearson(pred, torch.tensor(df[column].values)) >= 0.95
    assert pearson(pred, torch.tensor(df["hrl"].values)) >= 0.75  # and it predicts the measurement


@needs_oracle
def test_both_keras_layouts_load_and_differ():
    import h5py

    with h5py.File(UTR_DIR / "evolution_model.hdf5") as f:
        assert f["model_weights/convolution1d_1/convolution1d_1_W:0"].shape == (8, 1, 4, 40)   # Keras 1
    with h5py.File(UTR_DIR / "retrained_evolution_model.hdf5") as f:
        assert f["model_weights/convolution1d_1/convolution1d_1_2/kernel:0"].shape == (8, 4, 40)  # Keras 2
    a, b = load_optimus(UTR_DIR / "evolution_model.hdf5"), load_optimus(UTR_DIR / "retrained_evolution_model.hdf5")
    x = encode(["".join("ACGT"[i] for i in row) for row in torch.randint(0, 4, (500, 50),
                generator=torch.Generator().manual_seed(0)).tolist()])
    ra, rb = mrl_reward("mrl", UTR_DIR)(x), mrl_reward("mrl-eval", UTR_DIR)(x)
    assert not torch.allclose(ra, rb)
    assert pearson(ra, rb) > 0.9  # two fits of one task agree on random sequences (README: 0.98)
    assert isinstance(a, Optimus5Prime) and not a.training and not b.training


@needs_oracle
def test_keras1_layout_written_from_keras2_weights_gives_same_model(tmp_path):
    """Re-store the retrained weights in the Keras-1 layout; the loader must give the same network."""
    import h5py

    src = UTR_DIR / "retrained_evolution_model.hdf5"
    dst = tmp_path / "keras1.hdf5"
    with h5py.File(src) as f, h5py.File(dst, "w") as g:
        mw = g.create_group("model_weights")
        for layer in ("convolution1d_1", "convolution1d_2", "dense_1", "dense_2"):
            grp = f["model_weights"][layer]
            names = [n.decode() for n in grp.attrs["weight_names"]]
            kernel = grp[next(n for n in names if n.endswith("kernel:0"))][()]
            bias = grp[next(n for n in names if n.endswith("bias:0"))][()]
            if kernel.ndim == 3:
                kernel = kernel[:, None]
            out = mw.create_group(layer)
            out.attrs["weight_names"] = [f"{layer}_W:0".encode(), f"{layer}_b:0".encode()]
            out[f"{layer}_W:0"], out[f"{layer}_b:0"] = kernel, bias
    x = one_hot(torch.randint(0, 4, (64, 54), generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        assert torch.allclose(load_optimus(src)(x), load_optimus(dst)(x), atol=1e-6)


@needs_oracle
def test_random_library_level_matches_paper_pretrained():
    x = torch.randint(0, 4, (4000, 50), generator=torch.Generator().manual_seed(0))
    r = mrl_reward("mrl", UTR_DIR)(x)
    # the paper's pretrained model (trained on the near-uniform random library): median 0.406, top-10 % 0.869
    assert 0.30 < float(r.median()) < 0.50
    assert 0.80 < float(r.quantile(0.9)) < 0.98


@needs_oracle
def test_reward_is_differentiable_in_soft_one_hot():
    reward = mrl_reward("mrl", UTR_DIR)
    x = torch.randint(0, 4, (6, 50), generator=torch.Generator().manual_seed(2))
    soft = torch.nn.functional.one_hot(x, 5).float().requires_grad_(True)
    out = reward(soft)
    assert torch.allclose(out.detach(), reward(x), atol=1e-5)
    out.sum().backward()
    assert soft.grad is not None and torch.isfinite(soft.grad).all() and soft.grad[..., :4].abs().sum() > 0
    assert torch.all(soft.grad[..., 4] == 0)  # the mask channel does not reach the oracle


@needs_oracle
def test_masked_positions_read_as_n():
    reward = mrl_reward("mrl", UTR_DIR)
    x = torch.randint(0, 4, (3, 50), generator=torch.Generator().manual_seed(3))
    xm = x.clone()
    xm[:, :10] = 4
    model = load_optimus(UTR_DIR / "evolution_model.hdf5")
    cds = one_hot(encode("ATGG", seq_len=None))[0].expand(3, -1, -1)
    oh = torch.cat([one_hot(x), cds], 1)
    oh[:, :10] = 0
    with torch.no_grad():
        assert torch.allclose(reward(xm), model(oh), atol=1e-6)


def test_missing_oracle_names_the_public_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    for call in (lambda: mrl_reward("mrl"), lambda: mrl_reward("mrl", tmp_path / "nowhere"),
                 lambda: mrl_reward("mrl-eval", tmp_path)):
        with pytest.raises(DomainError) as err:
            call()
        msg = str(err.value)
        assert "pjsample/human_5utr_modeling" in msg and "modeling/saved_models" in msg and "\n" not in msg
    with pytest.raises(DomainError, match="unknown MRL predictor"):
        mrl_reward("mrl-v2", tmp_path)


def test_env_var_and_direct_file(monkeypatch, tmp_path):
    (tmp_path / "evolution_model.hdf5").write_bytes(b"")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert oracle_path("mrl") == tmp_path / "evolution_model.hdf5"
    assert oracle_path("mrl", tmp_path / "evolution_model.hdf5") == tmp_path / "evolution_model.hdf5"


def test_tokens_round_trip_and_errors():
    x = encode(["ACGU" * 12 + "AC", "acgt" * 12 + "gg"])
    assert x.dtype == torch.long and x.shape == (2, 50)
    assert decode(x, rna=False)[0] == "ACGT" * 12 + "AC"
    assert decode(x, rna=True)[1] == "ACGU" * 12 + "GG"
    assert decode(torch.full((1, 3), 4))[0] == "NNN"
    with pytest.raises(ValueError, match="not a nucleotide"):
        encode(["ACGX" + "A" * 46])
    with pytest.raises(ValueError, match="50 nt expected"):
        encode(["ACGT"])
