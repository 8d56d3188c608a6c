"""Token languages: one interface (`base.TokenLanguage`), three implementations (the wavelet
language, BPE over it, pixels), and the scan grammar and coder behind the wavelet language."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

# numba keys a cached kernel on its own file only, but these kernels inline each other's functions
# and constants across files (coder.py runs grammar.py's scan). Their cache lives in a folder keyed
# on the source of every file here, so an edit to any of them recompiles all, never runs stale code;
# the folder is under NUMBA_CACHE_DIR when the user set one.
_HERE = Path(__file__).parent
_SOURCE_KEY = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(_HERE.glob("*.py")))).hexdigest()[:16]
_user_cache_dir = numba.config.CACHE_DIR
if _user_cache_dir:
    _cache_root = Path(_user_cache_dir)
elif os.access(_HERE, os.W_OK):
    _cache_root = _HERE / "__pycache__"
else:
    _cache_root = Path.home() / ".cache" / "wavelet-tokens"
numba.config.CACHE_DIR = str(_cache_root / f"numba-{_SOURCE_KEY}")
try:  # numba reads CACHE_DIR when a kernel is defined: define them all now, then restore the user's
    from . import bpe, coder, context, grammar  # noqa: F401
finally:
    numba.config.CACHE_DIR = _user_cache_dir
