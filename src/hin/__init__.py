"""HIN: Hierarchical Interaction Network for image captioning."""

from hin.config import HINConfig

__all__ = ["HINConfig"]
__version__ = "0.1.0"
