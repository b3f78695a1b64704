"""Layer 8: the relay. Serves any source volbridge can open in the BossDB REST dialect and as
precomputed over HTTP, through byte-bounded cache tiers, so relays chain into a multi-tier cache."""

from .app import create_app
from .config import RelayConfig, SourceConfig, TokenConfig
from .state import Relay

__all__ = ["Relay", "RelayConfig", "SourceConfig", "TokenConfig", "create_app"]
