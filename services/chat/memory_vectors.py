"""A turn's question vector, carried in its `index_chat_turn` message: float32, base64 (2 KB for 384-d)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np


def pack(vector: Sequence[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")
