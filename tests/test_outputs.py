"""Outputs a scientist opens directly: samples.csv's column is named for the domain (smiles,
sequence, image), baseline_samples.csv sits beside it, FASTA headers are one format for DNA and
RNA (id, then the reward and every evaluation oracle), the RNA evaluation oracle is reported
however its folder was given, and digit metrics are not computed on a user's model."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from svdd.cli import main
from svdd.domains.fasta import read_fasta_scores

ROOT = Path(__file__).resolve().parents[1]
UTR_DIR = ROOT.parent / "shared" / "data" / "utr"


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def run(tmp_path, *argv, name="run"):
    out = tmp_path / name
    assert main(["sample", *argv, "--num-samples", "4", "--out", str(out), "--quiet"]) == 0
    return out


def test_molecules_rows_are_smiles_with_a_baseline_file(tmp_path):
    pytest.importorskip("rdkit")
    out = run(tmp_path, "--domain", "molecules", "--reward", "qed", "--method", "best-of-n", "--num-candidates", "2",
              "--num-steps", "4")
    method, base = rows(out / "samples.csv"), rows(out / "baseline_samples.csv")
    assert list(method[0])[:3] == ["index", "smiles", "reward"] and list(base[0])[:3] == ["index", "smiles", "reward"]
    assert len(method) == len(base) == 4
    from rdkit import Chem

    assert any(Chem.MolFromSmiles(r["smiles"]) is not None for r in method + base)


def test_dna_fasta_and_csv(tmp_path):
    out = run(tmp_path, "--domain", "dna", "--reward", "hepg2", "--method", "best-of-n", "--num-candidates", "2",
              "--num-steps", "4")
    table = rows(out / "samples.csv")
    assert list(table[0])[:3] == ["index", "sequence", "reward"] and set(table[0]["sequence"]) <= set("ACGT")
    records = read_fasta_scores(out / "samples.fasta")
    assert [r[0] for r in records] == [f"sample_{i:05d}" for i in range(4)]
    assert all(set(vals) == {"hepg2", "hepg2_eval"} for _, _, vals in records)
    assert [round(v["hepg2"], 3) for _, _, v in records] == [round(float(r["reward"]), 3) for r in table]
    summary = json.loads((out / "summary.json").read_text())
    assert "hepg2_eval" in summary["evaluation"] and "hepg2_eval" in summary["baseline"]["evaluation"]


@pytest.mark.skipif(not (UTR_DIR / "evolution_model.hdf5").exists(), reason="the 5' UTR predictors (shared/data/utr)")
def test_rna_reports_the_evaluation_oracle_when_given_with_oracle_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("SVDD_UTR_ORACLE_DIR", raising=False)
    out = run(tmp_path, "--domain", "rna", "--reward", "mrl", "--oracle-dir", str(UTR_DIR), "--method", "ancestral",
              "--num-steps", "4")
    table = rows(out / "samples.csv")
    assert list(table[0])[:3] == ["index", "sequence", "reward"] and "mrl_eval" in table[0]
    summary = json.loads((out / "summary.json").read_text())
    assert "mrl_eval" in summary["evaluation"]
    records = read_fasta_scores(out / "samples.fasta")
    assert records[0][0] == "sample_00000" and set(records[0][2]) == {"mrl", "mrl_eval"}
    assert records[0][2]["mrl_eval"] == pytest.approx(float(table[0]["mrl_eval"]), abs=1e-4)


def test_images_rows_point_to_per_sample_pngs(tmp_path):
    from PIL import Image

    out = run(tmp_path, "--domain", "images", "--reward", "compressibility", "--method", "best-of-n",
              "--num-candidates", "2", "--num-steps", "4")
    for name in ("samples.csv", "baseline_samples.csv"):
        table = rows(out / name)
        assert list(table[0])[:3] == ["index", "image", "reward"]
        for r in table:
            with Image.open(out / r["image"]) as im:
                assert im.size == (16, 16)
    assert rows(out / "samples.csv")[0]["image"] == "images/sample_00000.png"
    assert rows(out / "baseline_samples.csv")[0]["image"] == "baseline_images/sample_00000.png"


def test_digit_metrics_only_for_the_shipped_model():
    from svdd.domains.images import DOMAIN

    x0 = torch.zeros(3, 1, 16, 16)
    shipped = DOMAIN.metrics(x0, DOMAIN.decode(x0), None)
    user = DOMAIN.metrics(x0, DOMAIN.decode(x0), None, user_model=True)
    assert "eval_digit_counts" in shipped and "eval_digit_counts" not in user
    assert "eval_digit" not in DOMAIN.sample_columns(x0, None, None, user_model=True)


def test_samples_tensors_match_the_csv(tmp_path):
    from svdd.runfolder import load_tensors

    out = run(tmp_path, "--domain", "toy-masked", "--method", "svdd-pm", "--num-candidates", "2")
    tensors, meta = load_tensors(out / "samples.safetensors")
    table = rows(out / "samples.csv")
    assert ["".join("abc"[int(i)] for i in row) for row in tensors["x0"]] == [r["sample"] for r in table]
    assert os.path.exists(out / "baseline_samples.safetensors")
