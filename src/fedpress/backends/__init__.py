"""Codecs backed by external libraries (SZ3, SZ2, ZFP, lossless coders)."""
