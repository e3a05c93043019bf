"""syncd: a bulk media sync daemon for the memories.ai MAVI v2 API."""

from __future__ import annotations

__version__ = "0.1.0"
