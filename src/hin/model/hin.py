"""The HIN captioning model: `encode()` features once, then `decode()` (teacher forcing)
or `step()` (one token at a time over an explicit `DecoderCache`).

The model knows nothing of files, vocabularies or metrics: token ids in, log-probs out.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hin.config import HINConfig
from hin.errors import UsageError
from hin.model.decoder import Decoder, DecoderCache
from hin.model.encoder import Encoder, EncoderOutput
from hin.model.layers import AttentionTrace


class HIN(nn.Module):
    def __init__(self, config: HINConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spec §6: Xavier-uniform for every parameter with more than one dimension (word
        embeddings and global tokens included), attention biases 0 (set by the layers),
        and the frozen position table as configured."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        self.decoder.reset_position_table()

    def _check_features(self, grid: Tensor, region: Tensor) -> None:
        expected = {"grid": (grid, self.config.grid_dim), "region": (region, self.config.region_dim)}
        for name, (features, dim) in expected.items():
            if features.dim() != 3 or features.shape[-1] != dim:
                raise UsageError(
                    f"{name} features must be [batch, tokens, {dim}] for this model "
                    f"(config.{name}_dim={dim}), got shape {list(features.shape)}")
        if grid.shape[0] != region.shape[0]:
            raise UsageError(f"grid and region batch sizes differ: {grid.shape[0]} vs "
                             f"{region.shape[0]}")

    def encode(self, grid: Tensor, region: Tensor, trace: AttentionTrace | None = None) -> EncoderOutput:
        """grid [B, Ng, Dg], region [B, Nr, Dr] (zero rows = padding) -> EncoderOutput.
        `trace` (hin.explain only) collects attention probabilities on the way."""
        self._check_features(grid, region)
        return self.encoder(grid, region, trace)

    def decode(self, tokens: Tensor, enc: EncoderOutput, trace: AttentionTrace | None = None) -> Tensor:
        """Teacher forcing. tokens [B, T] -> [B, T, V]; tokens [B, K, T] (K hypotheses per
        image, e.g. SCST beams) -> [B, K, T, V]. Log-probabilities in float32."""
        if tokens.dim() == 2:
            return self.decoder(tokens[:, None], enc, trace)[:, 0]
        return self.decoder(tokens, enc, trace)

    def forward(self, grid: Tensor, region: Tensor, tokens: Tensor) -> Tensor:
        """encode + decode in one call (what DistributedDataParallel wraps for cross-entropy;
        SCST wraps hin.training.scst.SelfCritical)."""
        return self.decode(tokens, self.encode(grid, region))

    def init_cache(self, enc: EncoderOutput) -> DecoderCache:
        return self.decoder.init_cache(enc)

    def step(self, tokens: Tensor, cache: DecoderCache) -> tuple[Tensor, DecoderCache]:
        """tokens [B, K] -> (log-probs [B, K, V], the cache extended by one position)."""
        return self.decoder.step(tokens, cache)

    @property
    def device(self) -> torch.device:
        return self.decoder.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
