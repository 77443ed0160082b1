"""``svdd.from_transformers``: a transformers masked LM as a ``MaskedProcess``.

The exactness checks use a module with fixed known logits (no transformers needed); the rest use
a tiny random ``BertForMaskedLM`` built from a ``BertConfig`` (transformers' own test style) and
skip when transformers is not installed. Nothing touches the network.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import svdd
from svdd.process.masked import MaskedProcess
from svdd.process.transformers import TransformersMaskedProcess, from_transformers

V, MASK, PAD, CLS, SEP = 30, 4, 0, 2, 3
SPECIAL = [0, 1, 2, 3, 4]                         # [PAD] [UNK] [CLS] [SEP] [MASK], BERT's layout
DOCS = Path(__file__).resolve().parents[1] / "docs" / "text.md"


class FixedLogits(nn.Module):
    """Logits ``log p (L, V)`` whatever the input, returned the way transformers does (``.logits``);
    records the keyword arguments of every call."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.register_buffer("logp", logp)
        self.calls = []

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        return SimpleNamespace(logits=self.logp.expand(input_ids.shape[0], -1, -1))


class Recorder(nn.Module):
    """Wraps a real model and records the keyword arguments it is called with."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []
        self.config = model.config

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return self.inner(**kwargs)


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, type_vocab_size=2,
                                     pad_token_id=PAD)
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(config).eval()


def _fixed(L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(L, V, generator=g) * 2, dim=-1)


# -- exactness against MaskedProcess --------------------------------------------------------------

@pytest.mark.parametrize("forbid", [(), (PAD, CLS, SEP)])
def test_transitions_equal_masked_process_with_the_same_denoiser(forbid):
    L = 6
    logp = _fixed(L)
    proc = from_transformers(FixedLogits(logp), mask_token_id=MASK, seq_len=L, vocab_size=V, forbid_token_ids=forbid)

    def denoiser(x, t):                                # the same denoiser, written by hand
        logits = logp.expand(x.shape[0], -1, -1).clone()
        logits[..., list(forbid)] = -math.inf
        return logits

    ref = MaskedProcess(denoiser, seq_len=L, vocab_size=V, mask_id=MASK)
    x_t = torch.tensor([[MASK, 7, MASK, MASK, 9, MASK], [MASK] * L, [5, 6, 7, 8, 9, 10]])
    for t, s in [(1.0, 0.75), (0.6, 0.3), (0.2, 0.0)]:
        mine, theirs = proc.transition(x_t, t, s), ref.transition(x_t, t, s)
        assert torch.equal(mine.probs, theirs.probs) and torch.equal(mine.x0_hat, theirs.x0_hat)
        x_next = mine.sample(torch.Generator().manual_seed(1))
        assert torch.equal(mine.log_prob(x_next), theirs.log_prob(x_next))
        # and both equal the closed form: p_k (m_t − m_s)/m_t on allowed tokens, m_s/m_t on [MASK]
        m_t, m_s = float(proc.mask_prob(t)), float(proc.mask_prob(s))
        allowed = torch.ones(V, dtype=torch.bool)
        allowed[[MASK, *forbid]] = False
        p = torch.where(allowed, logp.double().exp(), 0.0)
        p = p / p.sum(-1, keepdim=True)
        expect = p * (m_t - m_s) / m_t
        expect[:, MASK] = m_s / m_t
        masked = x_t == MASK
        assert torch.allclose(mine.probs[masked], expect.expand(3, L, V)[masked], atol=1e-6, rtol=0)
        assert torch.equal(mine.probs[~masked], nn.functional.one_hot(x_t[~masked], V).double())
        assert torch.allclose(mine.probs.sum(-1), torch.ones(3, L, dtype=torch.float64), atol=1e-12)


def test_time_conditioning_passes_t_as_the_callable_says():
    module = FixedLogits(_fixed(4))
    proc = from_transformers(module, mask_token_id=MASK, seq_len=4, vocab_size=V,
                             time_conditioning=lambda t: {"timesteps": -torch.log1p(-proc.mask_prob(t))})
    proc.predict_x0(proc.prior(3), torch.tensor(0.5))
    sent = module.calls[-1]["timesteps"]
    assert sent.shape == (3,) and torch.allclose(sent, torch.full((3,), -math.log(1 - float(proc.mask_prob(0.5))),
                                                                   dtype=sent.dtype), atol=1e-6)
    by_name = from_transformers(module, mask_token_id=MASK, seq_len=4, vocab_size=V, time_conditioning="sigma")
    by_name.predict_x0(by_name.prior(2), torch.tensor([0.25, 0.75]))
    assert torch.equal(module.calls[-1]["sigma"], torch.tensor([0.25, 0.75]))
    time_free = from_transformers(module, mask_token_id=MASK, seq_len=4, vocab_size=V)
    time_free.predict_x0(time_free.prior(2), 0.5)
    assert set(module.calls[-1]) == {"input_ids", "attention_mask"}


def test_logits_are_cast_to_fp32_before_forbidding():
    logp = _fixed(5).to(torch.bfloat16)
    proc = from_transformers(FixedLogits(logp), mask_token_id=MASK, seq_len=5, vocab_size=V, forbid_token_ids=[PAD])
    logits = proc.model(proc.prior(2), torch.ones(2))
    assert logits.dtype == torch.float32 and torch.isinf(logits[..., [MASK, PAD]]).all()
    x0_hat = proc.predict_x0(proc.prior(2), 1.0)
    assert x0_hat.dtype == torch.float32 and torch.all(x0_hat[..., [MASK, PAD]] == 0)


def test_prompts_rows_and_validation():
    module = FixedLogits(_fixed(8))
    # a tokenizer's output (a mapping) with left padding; two rows, k consecutive samples each
    enc = {"input_ids": torch.tensor([[PAD, 7, 8], [5, 6, 7]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    proc = from_transformers(module, mask_token_id=MASK, seq_len=8, vocab_size=V, prompt=enc, pad_token_id=PAD)
    assert isinstance(proc, TransformersMaskedProcess) and proc.prompt_length == 3
    x = proc.prior(4)
    assert x[:2, :3].tolist() == [[PAD, 7, 8]] * 2 and x[2:, :3].tolist() == [[5, 6, 7]] * 2
    assert torch.all(x[:, 3:] == MASK)
    assert proc.attention_mask(x)[:, 0].tolist() == [0, 0, 1, 1] and torch.all(proc.attention_mask(x)[:, 1:] == 1)
    assert proc.prior(1).shape == (1, 8)               # algorithms probe with one row
    bad = [dict(mask_token_id=V), dict(seq_len=2, prompt=[5, 6, 7]), dict(prompt=[[5, 6], [7]]),
           dict(prompt=[5, 6], attention_mask=[0, 1]),                     # padding without a pad id
           dict(prompt=[5, 6], attention_mask=[0, 1], pad_token_id=MASK),
           dict(prompt=[[PAD, 6], [5, 6]], attention_mask=[[1, 1], [0, 1]], pad_token_id=PAD),  # ambiguous pad
           dict(attention_mask=[1, 1, 1]), dict(forbid_token_ids=[V + 3]),
           dict(forbid_token_ids=[i for i in range(V) if i != MASK])]
    for kwargs in bad:
        args = {"mask_token_id": MASK, "seq_len": 8, "vocab_size": V, **kwargs}
        with pytest.raises(ValueError):
            from_transformers(module, **args)
    wrong_v = from_transformers(module, mask_token_id=MASK, seq_len=8, vocab_size=V + 1)
    with pytest.raises(ValueError, match="vocab_size"):
        wrong_v.predict_x0(wrong_v.prior(1), 1.0)


# -- a tiny random BertForMaskedLM -------------------------------------------------------------------

def test_bert_x0_hat_forbidden_ids_and_carry_over(bert):
    proc = svdd.from_transformers(bert, mask_token_id=MASK, seq_len=10, forbid_token_ids=SPECIAL)
    assert proc.vocab_size == V and proc.device == torch.device("cpu")
    x_t = proc.prior(3)
    x_t[:, [1, 4]] = torch.tensor([11, 12])
    x0_hat = proc.predict_x0(x_t, 0.5)
    assert x0_hat.dtype == torch.float32 and x0_hat.shape == (3, 10, V)
    assert torch.all(x0_hat[..., SPECIAL] == 0)
    assert torch.allclose(x0_hat.sum(-1), torch.ones(3, 10), atol=1e-5)
    assert torch.all(x0_hat[:, 1, 11] == 1) and torch.all(x0_hat[:, 4, 12] == 1)
    # the masked rows are BERT's own softmax with the forbidden ids removed
    logits = bert(input_ids=x_t, attention_mask=torch.ones_like(x_t)).logits
    logits[..., SPECIAL] = -math.inf
    assert torch.allclose(x0_hat[:, 0], torch.softmax(logits[:, 0], -1), atol=1e-6)


def test_bert_prompt_and_padding_fixed_and_attention_mask_passed(bert):
    recorder = Recorder(bert)
    L, prompt = 12, torch.tensor([[CLS, 7, 8, 9], [PAD, PAD, CLS, 11]])
    attn = torch.tensor([[1] * L, [0, 0] + [1] * 8 + [0, 0]])             # left-padded prompt, right padding
    proc = svdd.from_transformers(recorder, mask_token_id=MASK, seq_len=L, prompt=prompt, attention_mask=attn,
                                  forbid_token_ids=[CLS, SEP])
    seen = []
    res = svdd.sample(proc, lambda x: (x == 7).sum(1).float(), method="svdd-pm", num_samples=4, num_steps=6,
                      num_candidates=4, generator=torch.Generator().manual_seed(0), callback=lambda s: seen.append(s.x))
    assert len(seen) == 6
    for x in seen + [res.x0]:
        assert x[:2, :4].tolist() == [[CLS, 7, 8, 9]] * 2 and x[2:, :4].tolist() == [[PAD, PAD, CLS, 11]] * 2
        assert torch.all(x[2:, 10:] == PAD)
    x0 = res.x0
    # no mask left; [PAD] is never generated where some row pads (so padding stays readable from x)
    assert not torch.any(x0 == MASK) and not torch.any(x0[:2, 10:] == PAD)
    assert not torch.any(torch.isin(x0[:, 4:10], torch.tensor([CLS, SEP])))
    # unmasked tokens are carried over from step to step
    for a, b in zip(seen, seen[1:] + [x0]):
        if a.shape == b.shape:
            kept = a != MASK
            assert torch.equal(a[kept], b[kept])
    # the attention mask reached the model, with 0 exactly at the padding
    assert recorder.calls and all("attention_mask" in c for c in recorder.calls)
    last = recorder.calls[-1]
    expect = ~((last["input_ids"] == PAD) & (attn == 0).any(0))
    assert torch.equal(last["attention_mask"].bool(), expect)


def test_bert_padding_is_masked_out_of_attention(bert):
    # right padding: x0_hat at real positions equals BERT run on the unpadded sequence
    L, real = 10, 7
    proc = svdd.from_transformers(bert, mask_token_id=MASK, seq_len=L, prompt=[CLS, 7],
                                  attention_mask=[1] * real + [0] * (L - real))
    x_t = proc.prior(2)
    x0_hat = proc.predict_x0(x_t, 1.0)
    short = bert(input_ids=x_t[:, :real]).logits.float()
    short[..., MASK] = -math.inf
    assert torch.allclose(x0_hat[:, 2:real], torch.softmax(short, -1)[:, 2:], atol=1e-5)
    padded = [list(r) for r in x_t.tolist()]
    assert all(row[real:] == [PAD] * (L - real) for row in padded)


def test_bert_in_bf16_gives_fp32_probabilities(bert):
    import copy

    half = copy.deepcopy(bert).to(torch.bfloat16)
    proc = svdd.from_transformers(half, mask_token_id=MASK, seq_len=8, forbid_token_ids=SPECIAL)
    x0_hat = proc.predict_x0(proc.prior(2), 1.0)
    assert proc.model(proc.prior(2), torch.ones(2)).dtype == torch.float32
    assert x0_hat.dtype == torch.float32 and torch.all(x0_hat[..., SPECIAL] == 0)
    full = svdd.from_transformers(bert, mask_token_id=MASK, seq_len=8, forbid_token_ids=SPECIAL)
    assert (x0_hat - full.predict_x0(full.prior(2), 1.0)).abs().max() < 0.05   # bf16 rounding only
    res = svdd.sample(proc, lambda x: x.float().mean(1), method="ancestral", num_samples=2, num_steps=4,
                      generator=torch.Generator().manual_seed(0))
    assert not torch.any(torch.isin(res.x0, torch.tensor(SPECIAL)))


def test_relaxed_one_hot_input_goes_through_inputs_embeds(bert):
    proc = svdd.from_transformers(bert, mask_token_id=MASK, seq_len=6, forbid_token_ids=SPECIAL)
    x = proc.prior(2)
    x[:, 0] = 9
    one_hot = nn.functional.one_hot(x, V).float().requires_grad_(True)
    logits = proc.model(one_hot, torch.ones(2))
    assert torch.allclose(logits, proc.model(x, torch.ones(2)), atol=1e-5)
    logits[..., 7].logsumexp(-1).sum().backward()
    assert one_hot.grad is not None and one_hot.grad.abs().sum() > 0


def test_bert_svdd_pm_beats_ancestral_on_a_token_count(bert):
    # reward: how many generated positions hold token 7 (random BERT: roughly 1 in 25 allowed ids)
    proc = svdd.from_transformers(bert, mask_token_id=MASK, seq_len=12, prompt=[CLS], forbid_token_ids=SPECIAL)

    def reward(x):
        return (x[:, 1:] == 7).sum(1).float()

    n, g = 32, torch.Generator().manual_seed(0)
    base = svdd.sample(proc, reward, method="ancestral", num_samples=n, num_steps=8, generator=g)
    aligned = svdd.sample(proc, reward, method="svdd-pm", num_samples=n, num_steps=8, num_candidates=8, generator=g)
    assert torch.all(base.x0[:, 0] == CLS) and torch.all(aligned.x0[:, 0] == CLS)
    diff = aligned.rewards.mean() - base.rewards.mean()
    se = math.sqrt(aligned.rewards.var() / n + base.rewards.var() / n)
    # tolerance: the improvement must exceed 4 standard errors of the difference of means
    assert diff > 4 * se, (aligned.rewards.mean(), base.rewards.mean(), se)
    assert aligned.info["nfe"] > base.info["nfe"]


def test_docs_text_example_runs(capsys):
    pytest.importorskip("transformers")
    text = DOCS.read_text()
    block = re.search(r"Runs offline as written:\n\n```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "docs/text.md", "exec"), {})
    out = capsys.readouterr().out
    before, after = map(float, re.search(r"completion: ([\d.]+) -> ([\d.]+)", out).groups())
    assert after > before
