"""Roofline analysis of a compiled graph (`tritium analyze`): what every op costs, what bounds it, how long
it should take on a given machine, and (`--profile`) how long it does take on this one.

    hw = load_hardware("h100")                      # compiler/hardware/h100.toml, a .toml path, or "this-machine"
    a = analyze(graph, {"s0": 1, "s1": 128, "s2": 256}, hw, "decode step")
    print(format_analysis(a))                       # per op kind and per layer: FLOPs, bytes, intensity, bound, time

Counts come from the ops themselves: `OpDef.cost(ins, out, attrs)` (ir/ops/base.py, overridden next to each op
that needs it) gives the float and integer operations and the bytes read from each operand at static types,
so packed weights count the bytes they are stored in and a new op brings its cost with it. Symbolic dims
are bound first (the KV-cache step graph's sequence, attention length and capacity: `step_env`). A read
from a parameter, or from a value computed from parameters alone, is a weight read; anything else is an
activation.

The model is the roofline: per op, compute time = flops / peak(dtype) + int_ops / peak(int8), memory time =
bytes / bandwidth, predicted time = the larger (its bound). When the whole graph's weights and results fit
the last-level cache and the hardware gives `cache_bandwidth`, bytes are priced at that instead (a step run
again finds them there). No launch, barrier or Python overhead is modelled: `--profile` shows what it adds.
"""
from __future__ import annotations

import ctypes
import math
import os
import re
import statistics
import time
import tomllib
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import ir
from ir.errors import TritiumError
from ir.interpreter import eval_attrs
from ir.shapes import evaluate

HARDWARE_DIR = Path(__file__).parent / "hardware"
THIS_MACHINE = "this-machine"
PEAK_KEYS = ("f64", "f32", "f16", "bf16", "int8")  # int8: integer operations (dots, table lookups) per second
_HW_KEYS = {"name", "bandwidth", "peak", "cache", "cache_bandwidth", "source"}


class HardwareError(TritiumError):
    """An unknown hardware name, or a hardware file that is missing, not TOML, or lacks what the model needs."""


class AnalyzeError(TritiumError):
    """A graph or option the analyzer cannot use (unbound symbols, --profile without the native CPU step)."""


# -- hardware ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    """What the roofline needs of a machine: peak operations per second per dtype, memory bandwidth
    (bytes/s), cache sizes (bytes, by level name) and optionally the last-level cache's bandwidth."""

    name: str
    peak: dict[str, float]
    bandwidth: float
    cache: dict[str, int] = field(default_factory=dict)
    cache_bandwidth: float | None = None
    source: str = ""

    def peak_for(self, dtype: str) -> float:
        """Float ops of `dtype` (f32, f16, ...) or "int8" for integer ops; a dtype the file omits runs at f32's peak."""
        return self.peak.get(dtype, self.peak["f32"])

    @property
    def llc(self) -> int:
        """The largest cache (bytes): what a repeated step can find its data in."""
        return max(self.cache.values(), default=0)


def hardware_names() -> list[str]:
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.toml")) + [THIS_MACHINE]


def load_hardware(spec: str) -> Hardware:
    """A shipped name (`tritium analyze --hardware` lists them: compiler/hardware/NAME.toml), a path to a
    .toml file, or "this-machine" (measured now, a few seconds). HardwareError otherwise."""
    if spec == THIS_MACHINE:
        return measure_this_machine()
    if spec.endswith(".toml") or os.sep in spec:
        path = Path(spec)
        if not path.is_file():
            raise HardwareError(f"hardware file {spec}: no such file")
    else:
        path = HARDWARE_DIR / f"{spec.lower()}.toml"
        if not path.is_file():
            raise HardwareError(f"unknown hardware {spec!r}; known: {', '.join(hardware_names())}, or a path to a .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HardwareError(f"cannot read hardware file {path}: {e}") from None
    return parse_hardware(text, str(path))


def _number(v: Any, what: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise HardwareError(f"{where}: {what} must be a positive number, got {v!r}")
    return float(v)


def parse_hardware(text: str, where: str = "<hardware>") -> Hardware:
    """A hardware description in TOML (see compiler/hardware/*.toml):

        name = "NVIDIA H100 SXM5"
        bandwidth = 3.35e12            # bytes/s from main memory
        cache_bandwidth = 10e12        # optional: bytes/s of the last-level cache
        [peak]                         # operations/s: f32 is required; f64, f16, bf16, int8 optional
        f32 = 67e12
        [cache]                        # optional: bytes per level
        l2 = 52428800
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HardwareError(f"{where}: not valid TOML: {e}") from None
    unknown = set(data) - _HW_KEYS
    if unknown:
        raise HardwareError(f"{where}: unknown key(s) {sorted(unknown)}; a hardware file has {sorted(_HW_KEYS)}")
    for key in ("name", "bandwidth", "peak"):
        if key not in data:
            raise HardwareError(f"{where}: missing {key!r} (a hardware file needs name, bandwidth and [peak] with f32)")
    if not isinstance(data["name"], str) or not data["name"]:
        raise HardwareError(f"{where}: name must be a non-empty string, got {data['name']!r}")
    peak = data["peak"]
    if not isinstance(peak, dict) or "f32" not in peak:
        raise HardwareError(f"{where}: [peak] must be a table with at least f32 (operations per second)")
    bad = set(peak) - set(PEAK_KEYS)
    if bad:
        raise HardwareError(f"{where}: [peak] has unknown dtype(s) {sorted(bad)}; use {', '.join(PEAK_KEYS)}")
    cache = data.get("cache", {})
    if not isinstance(cache, dict):
        raise HardwareError(f"{where}: [cache] must be a table of level = bytes")
    for k, v in cache.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise HardwareError(f"{where}: cache.{k} must be a positive integer (bytes), got {v!r}")
    cbw = data.get("cache_bandwidth")
    source = data.get("source", "")
    if not isinstance(source, str):
        raise HardwareError(f"{where}: source must be a string")
    return Hardware(data["name"], {k: _number(v, f"peak.{k}", where) for k, v in peak.items()},
                    _number(data["bandwidth"], "bandwidth", where), dict(cache),
                    None if cbw is None else _number(cbw, "cache_bandwidth", where), source)


PROBE = r"""
#include <stdint.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
static double sum_range(const float *x, int64_t lo, int64_t hi) {
    double total = 0;
    int64_t i = lo;
#if defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 32 <= hi; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
    }
    float b[8];
    _mm256_storeu_ps(b, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (int k = 0; k < 8; k++) total += b[k];
#endif
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (; i + 4 <= hi; i += 4) { s0 += x[i]; s1 += x[i + 1]; s2 += x[i + 2]; s3 += x[i + 3]; }
    for (; i < hi; i++) s0 += x[i];
    return total + (s0 + s1) + (s2 + s3);
}
/* 10 independent multiply-add chains, iters steps (AVX2: 8-lane FMAs, 16 flops each) */
static double fma_chains(int64_t iters) {
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
    for (int64_t i = 0; i < iters; i++) {
        a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
        a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
        a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
        a9 = _mm256_fmadd_ps(a9, b, c);
    }
    float o[8];
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                                    _mm256_add_ps(a8, a9))));
    return o[0] + o[7];
#else
    float a[10];
    for (int k = 0; k < 10; k++) a[k] = 1.0f;
    for (int64_t i = 0; i < iters; i++)
        for (int k = 0; k < 10; k++) a[k] = a[k] * 0.999999f + 1e-7f;
    return a[0] + a[9];
#endif
}
/* 10 independent chains of int8 multiply-adds, iters steps (AVX2 pmaddubsw: 32 byte products pairwise added, 64 ops) */
static double int8_chains(int64_t iters) {
#if defined(__AVX2__)
    const __m256i b = _mm256_set1_epi8(1);
    __m256i a0 = _mm256_set1_epi8(3), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
    for (int64_t i = 0; i < iters; i++) {
        a0 = _mm256_maddubs_epi16(a0, b); a1 = _mm256_maddubs_epi16(a1, b); a2 = _mm256_maddubs_epi16(a2, b);
        a3 = _mm256_maddubs_epi16(a3, b); a4 = _mm256_maddubs_epi16(a4, b); a5 = _mm256_maddubs_epi16(a5, b);
        a6 = _mm256_maddubs_epi16(a6, b); a7 = _mm256_maddubs_epi16(a7, b); a8 = _mm256_maddubs_epi16(a8, b);
        a9 = _mm256_maddubs_epi16(a9, b);
    }
    __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3)),
                                 _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a4, a5), _mm256_add_epi16(a6, a7)),
                                                  _mm256_add_epi16(a8, a9)));
    int16_t o[16];
    _mm256_storeu_si256((__m256i *)o, s);
    return (double)o[0] + o[15];
#else
    int32_t a[10];
    for (int k = 0; k < 10; k++) a[k] = 3;
    for (int64_t i = 0; i < iters; i++)
        for (int k = 0; k < 10; k++) a[k] = (a[k] & 127) * 3 + 1;
    return (double)a[0] + a[9];
#endif
}
/* operations per step of a chain: 16 flops (8-lane FMA), 64 int8 ops (pmaddubsw); 2 without AVX2 */
int probe_lanes(int kind) {
#if defined(__AVX2__) && defined(__FMA__)
    return kind == 1 ? 16 : 64;
#elif defined(__AVX2__)
    return kind == 1 ? 2 : 64;
#else
    return 2;
#endif
}
/* `samples` runs of one probe inside one thread team, as a step's ops run: kind 0 reads the next `piece`
   floats of x (wrapping), kind 1 runs fma_chains(iters), kind 2 int8_chains(iters), on every thread; after
   each a barrier, then thread 0 stamps the time: stamps[0..samples]. Returns the threads' count. */
int probe(int kind, const float *x, int64_t n, int64_t piece, int64_t iters, int samples, double *stamps) {
    int threads = 1;
    volatile double sink = 0;
    #pragma omp parallel
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        double total = 0;
        #pragma omp barrier
        if (t == 0) { threads = (int)T; stamps[0] = omp_get_wtime(); }
        for (int s = 0; s < samples; s++) {
            if (kind == 0) {
                const int64_t off = (s % (n / piece)) * piece;
                total += sum_range(x, off + piece * t / T, off + piece * (t + 1) / T);
            } else if (kind == 1) {
                total += fma_chains(iters);
            } else {
                total += int8_chains(iters);
            }
            #pragma omp barrier
            if (t == 0) stamps[s + 1] = omp_get_wtime();
        }
        #pragma omp critical
        sink += total;
    }
    return threads;
}
"""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def _caches() -> dict[str, int]:
    """Per level, the bytes of one cache (Linux sysfs); empty elsewhere."""
    out: dict[str, int] = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        out[f"l{level}"] = int(size.rstrip("KMG")) * mult
    return out


def _median_rate(work: float, run: Callable[[int], Any], times: int) -> float:
    """work / the fastest of `times` calls run(i) (the NumPy fallback)."""
    ts = []
    for i in range(times):
        t0 = time.perf_counter()
        run(i)
        ts.append(time.perf_counter() - t0)
    return work / min(ts)


def measure_this_machine(samples: int = 64) -> Hardware:
    """Measure this machine in a few seconds with the C compiler the CPU backend uses (backends/cpu/cc.py):
    each probe runs `samples` times inside one OpenMP thread team on every thread, a barrier after each run,
    as the ops of a native step do, and the rate is the fastest run's: a peak, and on a shared machine the run
    least disturbed by other processes. Probes: read bandwidth from DRAM (8 MB slices
    of a buffer 4x the last-level cache, read in turn, so no slice is cached), from the last-level cache (a
    4 MB buffer read again and again), f32 FMA throughput (AVX2: 10 chains of 8-lane FMAs per thread) and
    int8 multiply-add throughput (pmaddubsw). Without a C compiler with OpenMP: NumPy (a sum and a matmul,
    one thread), which underrates the machine."""
    from backends.cpu import cc

    caches = _caches()
    llc = max(caches.values(), default=32 << 20)
    big = np.ones(max(4 * llc, 64 << 20) // 4, np.float32)
    small = np.ones(min(llc // 4, 4 << 20) // 4, np.float32)
    piece = (8 << 20) // 4
    lib = None
    try:
        if "openmp" in cc.features():
            lib = cc.build(PROBE, "roofline_probe")
    except cc.NoCompilerError:
        pass
    if lib is not None:
        lib.probe.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                              ctypes.c_void_p]
        stamps = np.zeros(samples + 1)

        def rate(kind: int, x: np.ndarray, piece: int, iters: int, per_thread: float) -> float:
            threads = lib.probe(kind, x.ctypes.data, x.size, piece, iters, samples, stamps.ctypes.data)
            return per_thread * (threads if kind else 1) / float(np.min(np.diff(stamps)))

        lib.probe(0, big.ctypes.data, big.size, piece, 0, 2 * (big.size // piece), stamps.ctypes.data)  # warm up
        bw = rate(0, big, piece, 0, piece * 4)
        cbw = rate(0, small, small.size, 0, small.nbytes)
        iters = 50_000
        f32 = rate(1, big, 1, iters, iters * 10 * lib.probe_lanes(1))
        i8 = rate(2, big, 1, iters, iters * 10 * lib.probe_lanes(2))
        how = (f"measured now: C probes (compiler/analyze.py PROBE) on every OpenMP thread, the fastest of {samples} runs"
               f"{'' if 'avx2' in cc.features() else ', portable C (no AVX2)'}")
    else:
        pieces = big.size // piece
        bw = _median_rate(piece * 4, lambda i: big[(i % pieces) * piece:(i % pieces + 1) * piece].sum(), samples)
        cbw = _median_rate(small.nbytes, lambda i: small.sum(), samples)
        a = np.ones((256, 256), np.float32)
        f32 = _median_rate(2 * 256**3, lambda i: a @ a, samples)
        i8 = f32
        how = f"measured now with NumPy (no C compiler with OpenMP): a sum and a 256^3 matmul, fastest of {samples} runs"
    return Hardware(f"this machine ({_cpu_name()})", {"f32": f32, "f16": f32, "bf16": f32, "f64": f32 / 2, "int8": i8},
                    bw, caches, cbw, how)


# -- the analysis ----------------------------------------------------------------------------------------
@dataclass
class Work:
    """Sums over one op or many: operations, bytes (weights and activations read apart), roofline times."""

    flops: int = 0
    int_ops: int = 0
    weight_bytes: int = 0
    act_bytes: int = 0
    written: int = 0
    compute_s: float = 0.0
    memory_s: float = 0.0
    time_s: float = 0.0  # per op max(compute, memory); summed over ops
    count: int = 0

    def add(self, o: "Work") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(o, f.name))

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.act_bytes + self.written

    @property
    def intensity(self) -> float:
        """Operations (float and integer) per byte moved."""
        return (self.flops + self.int_ops) / self.bytes if self.bytes else math.inf

    @property
    def bound(self) -> str:
        if not self.count or (self.compute_s == 0 and self.memory_s == 0):
            return "-"
        return "compute" if self.compute_s > self.memory_s else "memory"


@dataclass
class OpRow:
    node: str
    op: str
    layer: str
    work: Work
    measured_s: float | None = None  # --profile: the median run's seconds
    fastest_s: float | None = None  # --profile: the fastest run's


@dataclass
class Analysis:
    title: str
    hardware: Hardware
    env: dict[str, int]
    rows: list[OpRow]
    cached: bool  # priced at the cache bandwidth: everything fits the last-level cache
    measured: dict[str, float] = field(default_factory=dict)  # --profile: step totals, by name

    @property
    def total(self) -> Work:
        w = Work()
        for r in self.rows:
            w.add(r.work)
        return w

    def rollup(self, key: Callable[[OpRow], str]) -> dict[str, tuple[Work, float | None]]:
        """Work and measured seconds (None unless profiled) per group, in order of first appearance."""
        out: dict[str, tuple[Work, float | None]] = {}
        for r in self.rows:
            w, m = out.get(key(r), (Work(), None))
            w.add(r.work)
            if r.measured_s is not None:
                m = (m or 0.0) + r.measured_s
            out[key(r)] = (w, m)
        return out


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def layer_of(node: ir.Node) -> str:
    """"layer N" from the module path the node came from (its loc), else from its parameters' names;
    otherwise the module itself (embed_tokens, lm_head, ...), or "graph"."""
    module = (node.loc or "").split(" (", 1)[0].strip()
    for text in [module, *(o[1:] for o in node.operands if o.startswith("@"))]:
        m = _LAYER.search(text)
        if m:
            return f"layer {int(m.group(1))}"
    return module.rsplit(".", 1)[-1] if module else "graph"


def weight_refs(g: ir.Graph) -> set[str]:
    """Parameters, and the values computed from parameters alone (a weight decoded in the graph)."""
    out = {"@" + p for p in g.params}
    for n in g.nodes:
        if n.operands and all(o in out for o in n.operands):
            out.add(n.ref)
    return out


def _static(t: ir.TensorType, env: dict[str, int]) -> ir.TensorType:
    return t if t.is_static else ir.TensorType(t.dtype, tuple(evaluate(d, env) for d in t.shape))


def _float_dtype(ins: list[ir.TensorType], out: ir.TensorType) -> str:
    for t in (out, *ins):
        if t.dtype.is_float:
            return t.dtype.name
    return "f32"


def analyze(g: ir.Graph, env: dict[str, int], hw: Hardware, title: str = "") -> Analysis:
    """Every node's cost at the symbol values `env`, priced on `hw`. Views cost nothing; their users read
    the bytes. AnalyzeError if a symbol is unbound."""
    types = g.types()
    try:
        static = {ref: _static(t, env) for ref, t in types.items()}
    except KeyError as e:
        raise AnalyzeError(f"graph @{g.name}: {e.args[0]}; give their sizes (--seq, --kv-len)") from None
    weights = weight_refs(g)
    costs = []
    for n in g.nodes:
        op = ir.OPS[n.op]
        ins = [static[o] for o in n.operands]
        c = op.cost(ins, static[n.ref], eval_attrs(op, n.attrs, env))
        reads = list(c.reads) + [0] * (len(ins) - len(c.reads))
        w = sum(b for o, b in zip(n.operands, reads) if o in weights)
        costs.append((n, ins, c, w, sum(reads) - w))
    footprint = sum(w + c.writes for _, _, c, w, _ in costs)
    cached = hw.cache_bandwidth is not None and 0 < footprint <= hw.llc
    bw = hw.cache_bandwidth if cached and hw.cache_bandwidth else hw.bandwidth
    rows = []
    for n, ins, c, w, a in costs:
        compute = c.flops / hw.peak_for(_float_dtype(ins, n.type)) + c.int_ops / hw.peak_for("int8")
        memory = (w + a + c.writes) / bw
        busy = bool(c.flops or c.int_ops or w or a or c.writes)
        rows.append(OpRow(n.name, n.op, layer_of(n), Work(c.flops, c.int_ops, w, a, c.writes, compute, memory,
                                                          max(compute, memory), int(busy))))
    return Analysis(title, hw, dict(env), rows, cached)


def step_env(g: ir.Graph, seq: int, kv_len: int, capacity: int | None = None) -> dict[str, int]:
    """The symbol values of a KV-cache step graph (frontends/kv_cache.py) running `seq` new tokens with
    attention over `kv_len` positions (the new ones included) in a cache of `capacity` (default: kv_len
    rounded up to generate()'s cache block)."""
    from .generate import CACHE_BLOCK

    if seq < 1 or kv_len < seq:
        raise AnalyzeError(f"a step needs seq >= 1 and kv-len >= seq (the cache holds the new tokens too), got seq {seq}, "
                           f"kv-len {kv_len}")
    capacity = capacity or -(-kv_len // CACHE_BLOCK) * CACHE_BLOCK
    axis = {"input_ids": (1, seq), "position_ids": (1, seq), "attention_mask": (1, kv_len)}
    env: dict[str, int] = {}
    for name, t in g.inputs:
        j, v = (2, capacity) if name.startswith("kv_") else axis.get(name, (None, 0))
        if j is not None and j < t.rank and isinstance(t.shape[j], str) and t.shape[j].isidentifier():
            env[t.shape[j]] = v
    return env


def step_inputs(g: ir.Graph, env: dict[str, int]) -> list[np.ndarray]:
    """Inputs for one run of a KV-cache step graph at `env` (step_env): token 0 at the last positions of an
    all-ones attention mask, past_len = kv_len - seq, a zero cache."""
    shapes = {name: tuple(evaluate(d, env) for d in t.shape) for name, t in g.inputs}
    if "input_ids" not in shapes or "attention_mask" not in shapes:
        raise AnalyzeError(f"graph @{g.name} is not a KV-cache step graph (inputs {list(shapes)[:4]} ...)")
    seq, kv = shapes["input_ids"][-1], shapes["attention_mask"][-1]
    xs = []
    for name, t in g.inputs:
        x = np.zeros(shapes[name], t.dtype.np)
        if name == "attention_mask":
            x[...] = 1
        elif name == "position_ids":
            x[...] = np.arange(kv - seq, kv)
        elif name == "past_len":
            x[...] = kv - seq
        xs.append(x)
    return xs


# -- tables ----------------------------------------------------------------------------------------------
def si(x: float, unit: str = "") -> str:
    """3 significant digits and an SI prefix: 3.96k, 538M, 26.9m (seconds: 26.9 ms)."""
    if x == 0:
        return f"0{' ' + unit if unit else ''}"
    for exp, prefix in ((12, "T"), (9, "G"), (6, "M"), (3, "k"), (0, ""), (-3, "m"), (-6, "µ"), (-9, "n")):
        if abs(x) >= 10.0**exp * 0.9995 or exp == -9:
            v = x / 10.0**exp
            return f"{v:.3g}{' ' if unit else ''}{prefix}{unit}"
    return f"{x:.3g}"


def _fmt_row(name: str, w: Work, measured: float | None, total_s: float, width: int, profiled: bool) -> str:
    ai = "inf" if math.isinf(w.intensity) else f"{w.intensity:.3g}"
    line = (f"{name:<{width}} {w.count:>5} {si(w.flops):>7} {si(w.int_ops):>7} {si(w.weight_bytes):>7} {si(w.act_bytes):>7} "
            f"{si(w.written):>7} {ai:>7} {w.bound:>8} {si(w.time_s, 's'):>9} {100 * w.time_s / total_s if total_s else 0:>6.1f}%")
    if profiled:
        ratio = f"{measured / w.time_s:.2f}x" if measured is not None and w.time_s else "-"
        line += f" {si(measured, 's') if measured is not None else '-':>9} {ratio:>9}"
    return line


def format_table(a: Analysis, groups: dict[str, tuple[Work, float | None]], what: str) -> str:
    profiled = bool(a.measured)
    total = a.total
    width = max([len(k) for k in groups] + [len(what), 5])
    head = (f"{what:<{width}} {'nodes':>5} {'FLOP':>7} {'int op':>7} {'W read':>7} {'A read':>7} {'written':>7} "
            f"{'op/B':>7} {'bound':>8} {'predicted':>9} {'share':>7}")
    if profiled:
        head += f" {'measured':>9} {'meas/pred':>9}"
    lines = [head]
    lines += [_fmt_row(k, w, m, total.time_s, width, profiled) for k, (w, m) in groups.items() if w.count or m]
    measured = sum(r.measured_s for r in a.rows if r.measured_s is not None) if profiled else None
    lines.append(_fmt_row("total", total, measured, total.time_s, width, profiled))
    return "\n".join(lines)


def format_analysis(a: Analysis, by_layer: bool = True, per_op: bool = False) -> str:
    hw = a.hardware
    peaks = ", ".join(f"{k} {si(v)}/s" for k, v in hw.peak.items())
    bw = f"{si(hw.bandwidth, 'B')}/s" + (f" (last-level cache {si(hw.cache_bandwidth, 'B')}/s)" if hw.cache_bandwidth else "")
    syms = ", ".join(f"{k} = {v}" for k, v in sorted(a.env.items())) or "none"
    out = [f"== {a.title} on {hw.name} ==",
           f"peak {peaks}; memory {bw}; symbols {syms}",
           "FLOP, int op: float and integer operations; W read, A read: bytes read from weights and from activations; "
           "written: bytes written; op/B: operations per byte",
           "priced at the last-level cache's bandwidth: weights and results fit in it" if a.cached else
           f"priced at memory bandwidth: weights and results take {si(a.total.weight_bytes + a.total.written, 'B')} "
           f"(last-level cache {si(hw.llc, 'B')})",
           "", format_table(a, a.rollup(lambda r: r.op), "op kind")]
    if by_layer:
        out += ["", format_table(a, a.rollup(lambda r: r.layer), "layer")]
    if per_op:
        out += ["", format_table(a, {f"%{r.node} ({r.op})": (r.work, r.measured_s) for r in a.rows if r.work.count
                                     or r.measured_s}, "node")]
    t = a.total
    out.append(f"\npredicted {a.title}: {si(t.time_s, 's')} ({t.bound}-bound overall: compute {si(t.compute_s, 's')}, "
               f"memory {si(t.memory_s, 's')}, summed over ops)")
    for k, v in a.measured.items():
        out.append(f"measured {k}: {si(v, 's')}" + (f" ({v / t.time_s:.2f}x the prediction)" if t.time_s else ""))
    return "\n".join(out)


# -- --profile: the native CPU step with its per-node timers -------------------------------------------
@dataclass
class Profile:
    per_node: dict[str, float]  # seconds per node, median over the runs (thread 0's view, barrier waits included)
    per_node_min: dict[str, float]  # the fastest run's, per node
    step_s: float  # the plain native step (one ctypes call), median
    step_min_s: float
    profiled_s: float  # the step built with timers, median


def profile(spec: Any, inputs: list[np.ndarray], repeat: int = 20, warmup: int = 3) -> Profile:
    """Time a target="cpu" specialization's native step: as built (the plain step) and built with its
    per-node timers (`backends.cpu.native.build(g, profile=True)`), interleaved, `repeat` runs each after
    `warmup`; medians. AnalyzeError unless it is the native step (a C compiler with OpenMP, and
    TRITIUM_CPU_MODE not "numpy")."""
    from backends.cpu import native

    from .generate import _blas_limit

    if not isinstance(spec.executable, native.NativeExecutable):
        raise AnalyzeError("--profile times the native CPU step: it needs target cpu, a C compiler with OpenMP, "
                           "and TRITIUM_CPU_MODE unset (not numpy)")
    with warnings.catch_warnings():  # (its Python fallbacks were warned about when the step was built)
        warnings.simplefilter("ignore")
        timed = native.build(spec.graph, profile=True)
    plain: list[float] = []
    both: list[float] = []
    runs: list[dict[str, float]] = []

    def call(f: Callable[[list[np.ndarray]], Any]) -> float:
        t0 = time.perf_counter()
        f(inputs)  # (a step writes its cache in place: every run writes the same positions)
        return time.perf_counter() - t0

    with _blas_limit(spec)():
        for i in range(warmup + repeat):
            p = call(spec.executable)
            timed.profile()  # (reset)
            t = call(timed)
            per = timed.profile()
            if i >= warmup:
                plain.append(p)
                both.append(t)
                runs.append(per)
    names = {k for r in runs for k in r}
    per_node = {k: statistics.median([r.get(k, 0.0) for r in runs]) for k in names}
    per_min = {k: min(r.get(k, 0.0) for r in runs) for k in names}
    return Profile(per_node, per_min, statistics.median(plain), min(plain), statistics.median(both))


def attach(a: Analysis, p: Profile) -> None:
    """Put a profile's per-node times beside the analysis rows, and its step times in `a.measured`."""
    for r in a.rows:
        r.measured_s = p.per_node.get(r.node)
        r.fastest_s = p.per_node_min.get(r.node)
    a.measured["step (native call, median)"] = p.step_s
    a.measured["step (native call, fastest)"] = p.step_min_s
    a.measured["step with per-node timers (median)"] = p.profiled_s
    a.measured["sum of the per-node medians"] = sum(p.per_node.values())
    a.measured["sum of the per-node fastest"] = sum(p.per_node_min.values())


# -- the plot --------------------------------------------------------------------------------------------
def plot(analyses: Sequence[Analysis], path: str, min_share: float = 0.005, fastest: bool = False) -> None:
    """A roofline PNG: per op kind and analysis (a marker shape each), attained operations/s (operations /
    predicted time; hollow: / measured time, the nodes' medians or with `fastest` their fastest runs)
    against operations per byte, under the roofs of the first analysis's hardware (one per distinct peak).
    Op kinds under `min_share` of their analysis's time (predicted and measured) are left out, so that the
    ops that matter can be read."""
    try:
        import matplotlib
    except ImportError:
        raise AnalyzeError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hw = analyses[0].hardware
    fig, ax = plt.subplots(figsize=(9, 6))
    def measured(a: Analysis, kind: str) -> float | None:
        ts = [r.fastest_s if fastest else r.measured_s for r in a.rows if r.op == kind]
        return sum(t for t in ts if t is not None) if any(t is not None for t in ts) else None

    groups = [(a, k, w, measured(a, k)) for a in analyses for k, (w, _) in a.rollup(lambda r: r.op).items()
              if w.bytes and w.time_s and w.flops + w.int_ops]
    total_m = {id(a): sum((r.fastest_s if fastest else r.measured_s) or 0.0 for r in a.rows) for a in analyses}
    shown = [(a, k, w, m) for a, k, w, m in groups
             if w.time_s >= min_share * a.total.time_s or (m or 0) >= min_share * total_m[id(a)]]
    ais = [w.intensity for _, _, w, _ in shown] or [1.0]
    bw = hw.bandwidth
    peaks: dict[float, list[str]] = {}
    for k, v in hw.peak.items():
        peaks.setdefault(v, []).append(k)
    xs = np.logspace(math.log10(min(min(ais) / 4, 1e-2)), math.log10(max(max(ais) * 4, 2 * max(peaks) / bw)), 200)
    for v, names in sorted(peaks.items(), reverse=True):
        ax.plot(xs, np.minimum(v, xs * bw), lw=1, color="gray", ls="-" if "f32" in names else "--")
        ax.annotate(f"{'/'.join(names)} {si(v)}op/s", (xs[-1], v), fontsize=7, ha="right", va="bottom")
    ax.annotate(f"memory {si(bw, 'B')}/s", (xs[0], xs[0] * bw), fontsize=7, va="bottom")
    if hw.cache_bandwidth and any(a.cached for a in analyses):  # those analyses were priced at the cache's bandwidth
        cb = hw.cache_bandwidth
        ax.plot(xs, np.minimum(max(peaks), xs * cb), lw=1, color="gray", ls=":")
        ax.annotate(f"last-level cache {si(cb, 'B')}/s", (xs[0], xs[0] * cb), fontsize=7, va="bottom")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kinds = list(dict.fromkeys(k for _, k, _, _ in shown))
    markers = "os^Dv<>"
    for a, k, w, m in shown:
        i = analyses.index(a)
        c = colors[kinds.index(k) % len(colors)]
        ops = w.flops + w.int_ops
        mk = markers[i % len(markers)]
        ax.scatter([w.intensity], [ops / w.time_s], marker=mk, color=c, s=45, zorder=3)
        ax.annotate(k, (w.intensity, ops / w.time_s), fontsize=7, xytext=(5, 3), textcoords="offset points", color=c)
        if m:
            ax.scatter([w.intensity], [ops / m], marker=mk, facecolors="none", edgecolors=c, s=70, zorder=3)
            ax.plot([w.intensity] * 2, [ops / w.time_s, ops / m], color=c, lw=0.6, ls=":")
    for i, a in enumerate(analyses):
        ax.scatter([], [], marker=markers[i % len(markers)], color="gray", label=a.title)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray",
               label=f"hollow: at the measured time ({'fastest run' if fastest else 'median'} per node)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operations per byte (float and integer)")
    ax.set_ylabel("operations per second")
    ax.set_title(f"Roofline on {hw.name} (op kinds with at least {100 * min_share:g}% of the time)", fontsize=10)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
