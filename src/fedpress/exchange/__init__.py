"""The round protocols' framework-free parts, shared by the simulator and Flower.

Plain numpy objects only (no torch, no simulator, no framework): what a round moves
between server and clients, and the arithmetic both ends must do alike.
"""

from __future__ import annotations

from .deltas import State, apply_changes, changes, raw_bytes, zeros_like

__all__ = ["State", "apply_changes", "changes", "raw_bytes", "zeros_like"]
