"""C shared by every native step: the prelude (ckernel.py's: includes, the threads' work split `share()`)
and the team functions that the linear, rms_norm and sdpa lowerings call.

The team functions are the kernels' own C, the one copy of each (dense_kernel.TEAM: 4 weight rows at a
time, AVX2 FMA, one thread per output; norm_kernel.TEAM: 8-lane sum of squares, then (x * r) * w;
attention_kernel.TEAM: one pass per query row, masks through broadcast strides, grouped heads read in
place), with the shapes as arguments (one C file holds every layer) and the work split by `share()`
inside the running team, so a step opens one thread team in all. k and v are read through their head
and position strides: attention reads the cache's first L positions in place.
"""
from __future__ import annotations

from .. import attention_kernel, dense_kernel, norm_kernel
from ..ckernel import PRELUDE

PAR_MIN = 1 << 15  # elements of work from which an op is split over the team (below, thread 0 runs it)

GEMV = dense_kernel.TEAM
RMS_NORM = norm_kernel.TEAM
SDPA = attention_kernel.TEAM


def prelude() -> str:
    return PRELUDE + f"\n#define PAR_MIN {PAR_MIN}  /* elements of work from which an op is split over the team */\n"
