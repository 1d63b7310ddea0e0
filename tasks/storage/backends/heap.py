"""Part buffers go back to the operating system when freed, so a long upload's memory stays flat.

glibc's malloc raises its mmap threshold to the size of the largest block freed (up to 32 MiB):
after the first 16 MiB part of an S3 upload is freed, every later part comes from the heap, and
the heap of a long upload keeps fragments it never returns (peak RSS streaming 1.6 GB to S3:
193 to 228 MiB, run to run; 192 in every run with a fixed threshold). Setting the threshold
turns that adjustment off: each buffer of at least THRESHOLD is a mapping of its own, unmapped
when freed. Process-wide, once; a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 1 << 20  # parts are 16 MiB or more; pieces of a part (a zstd frame, a COPY chunk) are less
log = logging.getLogger(__name__)


@functools.cache
def return_large_buffers() -> bool:
    """Fix malloc's mmap threshold (once per process); True if the C library took it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has a stub; others may lack it)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", THRESHOLD, taken)
    return taken
