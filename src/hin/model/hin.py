"""The HIN captioning model: `encode()` features once, then `decode()` (teacher forcing)
or `step()` (one token at a time over an explicit `DecoderCache`).

The model knows nothing of files, vocabularies or metrics: token ids in, log-probs out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from hin.config import HINConfig
from hin.errors import UsageError
from hin.model.decoder import Decoder, DecoderCache
from hin.model.encoder import Encoder, EncoderOutput
from hin.model.layers import AttentionTrace


def as_features(name: str, features: object, dim: int) -> Tensor:
    """`features` as the tensor [batch, tokens, dim] the encoder reads: a torch tensor or a
    numpy array of real numbers (whole numbers become float32). Anything else, another shape,
    or NaN / infinite values are refused with a message naming `name`."""
    if isinstance(features, np.ndarray) and (features.dtype.kind in "iuf"):
        features = torch.from_numpy(np.ascontiguousarray(features))
    if not isinstance(features, Tensor) or features.dtype.is_complex or features.dtype == torch.bool:
        what = (f"a {features.dtype} tensor" if isinstance(features, Tensor) else
                f"a numpy array of {features.dtype}" if isinstance(features, np.ndarray) else
                type(features).__name__)
        raise UsageError(f"{name} features must be a torch tensor or a numpy array of real numbers "
                         f"[batch, tokens, {dim}], got {what}")
    if features.dim() != 3 or features.shape[-1] != dim:
        raise UsageError(f"{name} features must be [batch, tokens, {dim}] for this model "
                         f"(config.{name}_dim={dim}), got shape {list(features.shape)}")
    if not features.is_floating_point():
        features = features.float()
    # One sum is the cheap test (NaN and infinities carry through it); only a non-finite sum,
    # which huge finite values could also give, is looked at value by value.
    finite = torch.isfinite(features.sum()) or torch.isfinite(features).flatten(1).all(dim=1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise UsageError(f"{name} features of image {first} (position in the batch, from 0) hold "
                         "NaN or infinite values: the features are broken; extract them again")
    return features


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

    def check_features(self, grid: object, region: object) -> tuple[Tensor, Tensor]:
        """(grid, region) as tensors this model reads (`as_features`), of one batch size."""
        grid = as_features("grid", grid, self.config.grid_dim)
        region = as_features("region", region, self.config.region_dim)
        if grid.shape[0] != region.shape[0]:
            raise UsageError(f"grid and region batch sizes differ: {grid.shape[0]} vs "
                             f"{region.shape[0]}")
        return grid, region

    def encode(self, grid: Tensor | np.ndarray, region: Tensor | np.ndarray,
               trace: AttentionTrace | None = None) -> EncoderOutput:
        """grid [B, Ng, Dg], region [B, Nr, Dr] (zero rows = padding; tensors or numpy
        arrays) -> EncoderOutput. `trace` (hin.explain only) collects attention
        probabilities on the way."""
        grid, region = self.check_features(grid, region)
        encoded: EncoderOutput = self.encoder(grid.to(self.device), region.to(self.device), trace)
        return encoded

    def decode(self, tokens: Tensor, enc: EncoderOutput, trace: AttentionTrace | None = None) -> Tensor:
        """Teacher forcing. tokens [B, T] -> [B, T, V]; tokens [B, K, T] (K hypotheses per
        image, e.g. SCST beams) -> [B, K, T, V]. Log-probabilities in float32."""
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.long, torch.int32) \
                or tokens.dim() not in (2, 3):
            raise UsageError("tokens must be an integer tensor [batch, T] or [batch, K, T] of ids, "
                             f"got {getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.config.vocab_size:
            raise UsageError(f"tokens must be ids from 0 to {self.config.vocab_size - 1} (the "
                             f"model's vocabulary), got {int(tokens.min())} to {int(tokens.max())}")
        one = tokens.dim() == 2
        logprobs: Tensor = self.decoder(tokens[:, None] if one else tokens, enc, trace)
        return logprobs[:, 0] if one else logprobs

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
