"""HIN: Hierarchical Interaction Network for image captioning."""

from hin.config import HINConfig

__all__ = ["Captioner", "HINConfig"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`hin.Captioner` is imported on first use, so `import hin` stays light."""
    if name == "Captioner":
        from hin.caption import Captioner

        return Captioner
    raise AttributeError(f"module 'hin' has no attribute {name!r}")
