"""What every decoding process does first, forked CPU worker or spawned GPU process: it leaves Ctrl-C to the
process that started it, and ends with it, so that nothing outlives a killed build."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1
PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: a forked worker loads nothing


def follow_parent() -> None:
    """Ignore SIGINT, and be killed when the process that started this one dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
