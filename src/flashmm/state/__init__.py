"""The engine's state over Redis: schema, keys, publisher, commands, embedded Valkey."""

from flashmm.state.keys import LIVE_CHANNELS, Keys, LiveChannel
from flashmm.state.schema import SCHEMA_VERSION

__all__ = ["LIVE_CHANNELS", "SCHEMA_VERSION", "Keys", "LiveChannel"]
