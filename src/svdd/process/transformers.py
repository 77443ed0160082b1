"""A ``transformers`` masked LM as a ``MaskedProcess`` (``svdd.from_transformers``).

A masked LM gives, for every position of a partly masked sequence ``x_t``, logits ``ℓ (B, L, V)``
over clean tokens. As an absorbing-state denoiser (MDLM "SUBS", ``svdd.process.masked``)::

    x0_hat[l] = softmax(ℓ[l] − ∞·1[forbidden])      for a masked position l (fp32)
    x0_hat[l] = one_hot(x_t[l])                      for an unmasked one (carried over)

where the forbidden set is the mask token plus ``forbid_token_ids`` (a BERT MLM happily writes
[CLS], [SEP] or [PAD]: pass ``tokenizer.all_special_ids``). The reverse step is then exactly
``MaskedProcess.transition`` (normalised, float64 draws); this module only builds the call.

Fixed tokens are tokens that are not the mask in the prior, so the carry-over keeps them:

- ``prompt`` (``P`` ids, or ``N`` rows of them): positions ``0..P−1`` of the prior hold the
  prompt and never change; positions ``P..L−1`` start masked. A mask id inside the prompt is an
  infill position and is generated.
- padding (``attention_mask == 0``): those positions hold ``pad_token_id`` and never change. The
  model gets ``attention_mask = 0`` there and 1 at every real or masked position. Rows may be
  reordered and copied by the algorithms, so the mask is read from the state itself: a position
  is padding iff it is padded in some prompt row and holds ``pad_token_id``; to keep that exact,
  the pad token is forbidden in ``x0_hat`` at those positions (and the prompt may not hold it
  there).

Time: a time-free model (LLaDA, BERT) is called as ``model(input_ids=x, attention_mask=a)``; a
time-conditioned one (MDLM) gets the keyword arguments ``time_conditioning(t)`` returns in
addition, with ``t (B,)`` float in the process's units (``process.mask_prob(t)`` is the masking
probability; e.g. MDLM's ``σ = −log(1 − m(t))``). A string ``"name"`` means ``{"name": t}``.
Logits (``.logits``, the first element of a tuple, or a tensor) are cast to float32 before
anything is forbidden, so a bf16 model gives the same kind of probabilities as an fp32 one.
``shift_logits=True`` handles Dream-style models, whose logits at ``l`` predict token ``l + 1``.

``transformers`` itself is never imported here: any callable with that calling convention works.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .masked import MaskedProcess
from .schedules import MaskSchedule

TimeConditioning = Union[None, str, Callable[[Tensor], Mapping]]


def _accepts(model, name: str) -> bool:
    """Whether ``model(..., name=...)`` is accepted (a named parameter or ``**kwargs``)."""
    fn = getattr(model, "forward", model)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):   # builtins, C extensions: assume the transformers convention
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _config(model, name: str):
    return getattr(getattr(model, "config", None), name, None)


def _as_rows(value, name: str, dtype=torch.long) -> Tensor:
    """A 1-D or 2-D integer tensor from a tensor, array or (nested) list; 1-D becomes one row."""
    if isinstance(value, Tensor):
        out = value.detach().to("cpu")
    else:
        try:
            out = torch.as_tensor(value)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name} must be token ids of one length per row (pad ragged prompts, e.g. "
                             f"tokenizer(..., padding=True)): {err}") from None
    if out.dtype.is_floating_point or out.dtype.is_complex:
        raise ValueError(f"{name} must hold integers, got {out.dtype}")
    if out.dim() == 1:
        out = out.unsqueeze(0)
    if out.dim() != 2:
        raise ValueError(f"{name} must be 1-D (one sequence) or 2-D (rows), got shape {tuple(out.shape)}")
    return out.to(dtype)


def _time_kwargs(time_conditioning: TimeConditioning) -> Optional[Callable[[Tensor], Mapping]]:
    if time_conditioning is None:
        return None
    if isinstance(time_conditioning, str):
        key = time_conditioning
        return lambda t: {key: t}
    if not callable(time_conditioning):
        raise ValueError("time_conditioning must be None (time-free), a keyword name, or a callable t -> dict")
    return time_conditioning


class TransformersDenoiser:
    """``denoiser(x (B, L) long, t (B,)) -> float32 logits (B, L, V)`` with forbidden ids at −∞,
    from a transformers-style ``model(input_ids=..., attention_mask=..., **time_kwargs)``.

    A float ``x (B, L, V)`` (a relaxed one-hot, as gradient guidance passes it) is embedded
    through ``model.get_input_embeddings()`` and sent as ``inputs_embeds``."""

    def __init__(self, model, *, vocab_size: int, mask_token_id: int, forbid_token_ids: Sequence[int] = (),
                 pad_token_id: Optional[int] = None, pad_positions: Optional[Tensor] = None,
                 time_conditioning: TimeConditioning = None, pass_attention_mask: bool = True,
                 shift_logits: bool = False):
        self.model = model
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.pad_positions = pad_positions        # (L,) bool: padded in some prompt row, or None
        self.time_kwargs = _time_kwargs(time_conditioning)
        self.pass_attention_mask = bool(pass_attention_mask)
        self.shift_logits = bool(shift_logits)
        forbidden = torch.zeros(self.vocab_size, dtype=torch.bool)
        forbidden[self.mask_token_id] = True
        for i in forbid_token_ids:
            forbidden[int(i)] = True
        self.forbidden = forbidden                # (V,) bool, moved to the logits' device on use

    def parameters(self):                         # so device inference and memory sizing see the model
        params = getattr(self.model, "parameters", None)
        return params() if callable(params) else iter(())

    def attention_mask(self, x: Tensor) -> Tensor:
        """``(B, L)`` long: 0 at padding, 1 at real and masked positions (read from ``x``)."""
        if self.pad_positions is None:
            return torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        if self.pad_positions.device != x.device:
            self.pad_positions = self.pad_positions.to(x.device)
        pad = (x == self.pad_token_id) & self.pad_positions
        return (~pad).long()

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        kwargs = {}
        if x.dtype.is_floating_point:             # (B, L, V) relaxed one-hot
            ids = x.argmax(dim=-1)
            weight = self.model.get_input_embeddings().weight
            kwargs["inputs_embeds"] = x.to(weight.dtype) @ weight
        else:
            ids = x
            kwargs["input_ids"] = x
        if self.pass_attention_mask:
            kwargs["attention_mask"] = self.attention_mask(ids)
        if self.time_kwargs is not None:
            kwargs.update(self.time_kwargs(t))
        out = self.model(**kwargs)
        logits = getattr(out, "logits", None)
        if logits is None:
            logits = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != ids.shape[:2] \
                or logits.shape[-1] != self.vocab_size:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the model returned logits of shape {shape}; expected (B, L, V) = "
                             f"({ids.shape[0]}, {ids.shape[1]}, {self.vocab_size}) (vocab_size= must match the "
                             "model's output size, which may be larger than the tokenizer's)")
        logits = logits.to(torch.float32, copy=True)
        if self.shift_logits:                     # Dream: logits at l predict token l + 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        if self.forbidden.device != logits.device:   # moved once, not on every call
            self.forbidden = self.forbidden.to(logits.device)
        logits = logits.masked_fill(self.forbidden, float("-inf"))
        if self.pad_positions is not None:        # keep "pad here" meaning "padding"
            if self.pad_positions.device != logits.device:
                self.pad_positions = self.pad_positions.to(logits.device)
            col = logits[..., self.pad_token_id]
            logits[..., self.pad_token_id] = col.masked_fill(self.pad_positions, float("-inf"))
        return logits


class TransformersMaskedProcess(MaskedProcess):
    """``MaskedProcess`` over a transformers masked LM (see the module docstring).

    ``template (N, L)``: the prior's rows — prompt ids, ``pad_token_id`` at padding and the mask
    elsewhere; ``prompt_length``: ``P``. With ``N`` rows, ``prior(n)`` gives sample ``i`` the row
    ``i·N // n`` (``n = N·k``: ``k`` consecutive samples per prompt)."""

    def __init__(self, denoiser: TransformersDenoiser, template: Tensor, prompt_length: int, *,
                 schedule: str | MaskSchedule = "loglinear", device=None, precision: str = "fp32"):
        super().__init__(denoiser, seq_len=template.shape[1], vocab_size=denoiser.vocab_size,
                         mask_id=denoiser.mask_token_id, schedule=schedule, device=device, precision=precision)
        self.template = template.to(self.device)
        self.prompt_length = int(prompt_length)
        self.pad_token_id = denoiser.pad_token_id

    @property
    def transformers_model(self):
        """The wrapped transformers model."""
        return self.model.model

    def attention_mask(self, x: Tensor) -> Tensor:
        """The ``attention_mask`` the model is given for ``x``: 0 at padding, else 1."""
        return self.model.attention_mask(x)

    def prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        rows = self.template.shape[0]
        index = torch.arange(num_samples, device=self.device) * rows // max(int(num_samples), 1)
        return self.template[index].clone()


def from_transformers(model, *, mask_token_id: int, seq_len: int, prompt=None, attention_mask=None,
                      pad_token_id: Optional[int] = None, time_conditioning: TimeConditioning = None,
                      vocab_size: Optional[int] = None, device=None, forbid_token_ids: Sequence[int] = (),
                      schedule: str | MaskSchedule = "loglinear", precision: str = "fp32",
                      shift_logits: bool = False) -> TransformersMaskedProcess:
    """A ``MaskedProcess`` that samples ``seq_len`` tokens from a transformers masked LM.

    Args:
        model: e.g. ``AutoModelForMaskedLM.from_pretrained(...)`` (BERT, ModernBERT, MDLM) or
            LLaDA's ``AutoModel``; called as ``model(input_ids=x, attention_mask=a, **time_kwargs)``
            and read through ``.logits``. Put in eval mode (dropout would make calls random).
        mask_token_id: the absorbing token (``tokenizer.mask_token_id``; MDLM: 50257).
        seq_len: total length ``L``, prompt and padding included.
        prompt: token ids ``(P,)`` or ``(N, P)`` (or a tokenizer's output with ``input_ids`` and
            ``attention_mask``), fixed at positions ``0..P−1``.
        attention_mask: 0 marks padding, over the prompt ``(P,)``/``(N, P)`` or the whole
            sequence ``(L,)``/``(N, L)``; padding holds ``pad_token_id`` and never changes.
        pad_token_id: defaults to ``model.config.pad_token_id``; needed only with padding.
        time_conditioning: None for time-free models; else a callable ``t (B,) -> dict`` of extra
            keyword arguments (MDLM: ``lambda t: {"timesteps": t}``), or a keyword name.
        vocab_size: the logits' size ``V`` (default ``model.config.vocab_size``).
        device: default the model's device.
        forbid_token_ids: ids never generated, besides the mask (``tokenizer.all_special_ids``).
        schedule, precision: as ``MaskedProcess`` (``precision="bf16"`` autocasts the forward).
        shift_logits: for Dream-style models whose logits at ``l`` predict token ``l + 1``.
    """
    # 1. sizes and ids
    seq_len = int(seq_len)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    max_pos = _config(model, "max_position_embeddings")
    if isinstance(max_pos, int) and seq_len > max_pos:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_position_embeddings {max_pos}")
    if vocab_size is None:
        vocab_size = _config(model, "vocab_size")
    if vocab_size is None:
        get_out = getattr(model, "get_output_embeddings", None)
        head = get_out() if callable(get_out) else None
        vocab_size = getattr(getattr(head, "weight", None), "shape", [None])[0]
    if vocab_size is None:
        raise ValueError("cannot tell the vocabulary size from the model; pass vocab_size=")
    vocab_size = int(vocab_size)
    mask_token_id = int(mask_token_id)
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} must lie in [0, vocab_size={vocab_size}); a tokenizer "
                         "without a mask token needs one added and the embeddings resized")
    forbid = [int(i) for i in forbid_token_ids]
    bad = [i for i in forbid if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"forbid_token_ids {bad} lie outside [0, {vocab_size})")
    if len(set(forbid) | {mask_token_id}) >= vocab_size:
        raise ValueError("forbid_token_ids leave no token to generate")
    if pad_token_id is None:
        pad_token_id = _config(model, "pad_token_id")

    # 2. prompt and padding -> the prior's template rows
    if isinstance(prompt, Mapping):                   # tokenizer output (BatchEncoding)
        if attention_mask is None:
            attention_mask = prompt.get("attention_mask")
        prompt = prompt["input_ids"]
    prompt_rows = _as_rows(prompt, "prompt") if prompt is not None else torch.empty(1, 0, dtype=torch.long)
    P = prompt_rows.shape[1]
    if P > seq_len:
        raise ValueError(f"the prompt has {P} tokens, more than seq_len={seq_len}")
    attn = None
    if attention_mask is not None:
        attn = _as_rows(attention_mask, "attention_mask")
        if attn.shape[1] == P and P != seq_len:        # over the prompt: the generated part is attended
            attn = torch.cat([attn, torch.ones(attn.shape[0], seq_len - P, dtype=torch.long)], dim=1)
        elif attn.shape[1] != seq_len:
            raise ValueError(f"attention_mask has length {attn.shape[1]}; expected the prompt's ({P}) or "
                             f"seq_len ({seq_len})")
        if not bool(((attn == 0) | (attn == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1")
    rows = max(prompt_rows.shape[0], attn.shape[0] if attn is not None else 1)
    for name, value in (("prompt", prompt_rows), ("attention_mask", attn)):
        if value is not None and value.shape[0] not in (1, rows):
            raise ValueError(f"{name} has {value.shape[0]} rows and the other input {rows}")
    template = torch.full((rows, seq_len), mask_token_id, dtype=torch.long)
    template[:, :P] = prompt_rows
    if bool(((template < 0) | (template >= vocab_size)).any()):
        raise ValueError(f"prompt ids must lie in [0, {vocab_size})")
    pad_positions = None
    if attn is not None and bool((attn == 0).any()):
        if pad_token_id is None:
            raise ValueError("padding (attention_mask 0) needs pad_token_id= (the model's config has none)")
        pad_token_id = int(pad_token_id)
        if pad_token_id == mask_token_id:
            raise ValueError("pad_token_id must differ from mask_token_id")
        if not 0 <= pad_token_id < vocab_size:
            raise ValueError(f"pad_token_id {pad_token_id} must lie in [0, {vocab_size})")
        padded = (attn == 0).expand(rows, seq_len)
        pad_positions = padded.any(dim=0)
        clash = (template == pad_token_id) & ~padded & pad_positions
        if bool(clash.any()):
            raise ValueError("a prompt token equal to pad_token_id sits where another row is padded, so padding "
                             "could not be told apart; use a distinct pad token")
        template = torch.where(padded, torch.full_like(template, pad_token_id), template)
        if not _accepts(model, "attention_mask"):
            raise ValueError("the prompt is padded but the model takes no attention_mask; pass prompts of one "
                             "length (or one process per prompt)")

    # 3. the denoiser and the process
    if getattr(model, "training", False) and callable(getattr(model, "eval", None)):
        model.eval()
    denoiser = TransformersDenoiser(model, vocab_size=vocab_size, mask_token_id=mask_token_id,
                                    forbid_token_ids=forbid, pad_token_id=pad_token_id, pad_positions=pad_positions,
                                    time_conditioning=time_conditioning,
                                    pass_attention_mask=_accepts(model, "attention_mask"), shift_logits=shift_logits)
    if device is None:
        device = getattr(model, "device", None)
        if not isinstance(device, (str, torch.device)):
            device = None                              # MaskedProcess reads it from the parameters
    return TransformersMaskedProcess(denoiser, template, P, schedule=schedule, device=device, precision=precision)
