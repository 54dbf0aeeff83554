"""Error-bounded lossy codecs written in fedpress (and their shared envelope)."""
