"""The HIN network (docs/model.md §1–6): layers, encoder, decoder and the model that joins them."""

from hin.model.decoder import DecoderCache
from hin.model.encoder import EncoderOutput
from hin.model.hin import HIN
from hin.model.layers import AttentionTrace

__all__ = ["HIN", "AttentionTrace", "DecoderCache", "EncoderOutput"]
