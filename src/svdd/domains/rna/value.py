"""A small convolutional SVDD-MC value network for 50-nt UTRs.

``UTRValueNet(x_t (B, L) tokens incl. mask, t (B,)) -> (B,)``: token + position embeddings,
a time embedding added to every position, three residual dilated convolutions (width 5,
dilations 1, 2, 4; receptive field 25 nt), mean- and max-pooling, a linear head. The MRL
predictor it imitates is itself a two-layer CNN, so a convolutional trunk is the natural
inductive bias (the SVDD code used a ConvGRU for this task); it is ~60 k parameters, cheap
enough to fit and query on a CPU. ``DOMAIN.extra["value_network"](process)`` builds it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...nn.denoisers import timestep_embedding
from ...values.learned import register_value_network


@register_value_network
class UTRValueNet(nn.Module):
    def __init__(self, vocab_size: int = 5, seq_len: int = 50, channels: int = 64, kernel_size: int = 5):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, channels=channels, kernel_size=kernel_size)
        self.embed = nn.Embedding(vocab_size, channels)
        self.pos = nn.Parameter(torch.randn(1, seq_len, channels) * 0.02)
        self.time = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d) for d in (1, 2, 4))
        self.norms = nn.ModuleList(nn.GroupNorm(8, channels) for _ in self.convs)
        self.head = nn.Sequential(nn.Linear(2 * channels, channels), nn.SiLU(), nn.Linear(channels, 1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.pos.shape[-1]
        h = self.embed(x.long()) + self.pos[:, : x.shape[1]] + self.time(timestep_embedding(t, c))[:, None]
        h = h.transpose(1, 2)                              # (B, C, L)
        for conv, norm in zip(self.convs, self.norms):
            h = h + conv(torch.relu(norm(h)))
        pooled = torch.cat([h.mean(-1), h.amax(-1)], dim=-1)
        return self.head(pooled).squeeze(-1)


def value_network(process) -> UTRValueNet:
    return UTRValueNet(process.vocab_size, process.seq_len)
