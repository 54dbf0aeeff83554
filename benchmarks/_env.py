"""The machine a benchmark ran on, for its report (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """Architecture, CPU model and SIMD level, CPU count, memory and OS, in one line."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, val = (t.strip() for t in line.split(":", 1))
                    info.setdefault(k, val)
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    simd = "/".join(fl for fl in ("avx2", "avx512f") if fl in flags) or "no avx2"
    cpu = (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} "
           f"model {info.get('model', '?')}, {simd})")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.machine()} {cpu}, {os.cpu_count()} cpus, {mem:.0f} GiB, "
            f"{platform.platform()}")
