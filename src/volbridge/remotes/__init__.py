"""Layer 6: volumes that are not chunked key-value data, and the URL registry."""

from .registry import FORMATS, FormatEntry, create_volume, open_volume, split_url

__all__ = ["FORMATS", "FormatEntry", "create_volume", "open_volume", "split_url"]
