"""KernelBuilder: the text of one Triton kernel, its parameters and the values it loads.

A kernel's parameters are, in order: the output buffer(s), every buffer it loads (`p0, p1, ...`),
the symbolic dims it uses (named as in the host code: `n0` for a symbol, `d3` for a derived dim),
then the template's own ints and constexprs. Static dims are printed as literals, so a Triton
compile specializes on them; kernels whose text is equal are emitted once and shared (every layer
of a model uses the same few).

All buffers are C-contiguous (the host allocates every result), so an element's offset is
sum(coord_i * stride_i) with strides computed from the dims.
"""
from __future__ import annotations

from typing import Callable

import ir
from ir.shapes import Dim

from .exprs import EMITTERS, compute_type, storage_type

INDENT = "    "


class KernelBuilder:
    def __init__(self, types: dict[str, ir.TensorType], inline: dict[str, ir.Node], host_dim: Callable[[Dim], str]) -> None:
        self.types, self.inline, self.host_dim = types, inline, host_dim
        self.outs: list[str] = []  # output buffer params, in order
        self.loads: dict[str, str] = {}  # ref -> pointer param
        self.dims: dict[str, None] = {}  # host dim names used, in order
        self.extra: list[str] = []  # the template's own int params
        self.constexpr: list[str] = []
        self.lines: list[str] = []
        self.depth = 1
        self.n_tmp = 0
        self.provided: dict[str, str] = {}  # ref -> an expression computed by the template (a matmul's acc)
        self.epilogue: ir.Node | None = None  # a matmul template stores this node's value (fusion.Plan)
        self._cache: list[dict[tuple, str]] = [{}]

    # -- text ----------------------------------------------------------------------------------------
    def line(self, s: str) -> None:
        self.lines.append(INDENT * self.depth + s)

    def t(self, expr: str) -> str:
        """Bind expr to a fresh temporary; return its name."""
        name = f"t{self.n_tmp}"
        self.n_tmp += 1
        self.line(f"{name} = {expr}")
        return name

    def open(self, header: str) -> None:
        """Start a block (`for ...:`); values computed inside it are not reused after it."""
        self.line(header)
        self.depth += 1
        self._cache.append({})

    def close(self) -> None:
        self.depth -= 1
        self._cache.pop()

    # -- parameters ----------------------------------------------------------------------------------
    def out(self, name: str = "out") -> str:
        self.outs.append(name)
        return name

    def ptr(self, ref: str) -> str:
        if ref not in self.loads:
            self.loads[ref] = f"p{len(self.loads)}"
        return self.loads[ref]

    def dim(self, d: Dim) -> str:
        if isinstance(d, int):
            return str(d)
        name = self.host_dim(d)
        self.dims[name] = None
        return name

    def int_param(self, name: str) -> str:
        if name not in self.extra:
            self.extra.append(name)
        return name

    def constexpr_param(self, name: str) -> str:
        if name not in self.constexpr:
            self.constexpr.append(name)
        return name

    def size(self, dims) -> str:
        """The product of dims, as kernel text (literals folded)."""
        static, sym = 1, []
        for d in dims:
            if isinstance(d, int):
                static *= d
            else:
                sym.append(self.dim(d))
        if static == 0:
            return "0"
        parts = ([str(static)] if static != 1 or not sym else []) + sym
        return parts[0] if len(parts) == 1 else f"({' * '.join(parts)})"

    # -- values --------------------------------------------------------------------------------------
    def type_of(self, ref: str) -> ir.TensorType:
        return self.types[ref]

    def constant(self, ref: str) -> float | int | bool | None:
        """The value of a scalar `full` (a constant the graph spelled as a node), else None."""
        n = self.inline.get(ref)
        if n is not None and n.op == "full" and n.type.rank == 0:
            return n.attrs["value"]
        return None

    def offset(self, shape: tuple, coords: list[str]) -> str:
        terms = []
        for i, c in enumerate(coords):
            if shape[i] == 1 or c == "0":
                continue
            stride = self.size(shape[i + 1:])
            terms.append(c if stride == "1" else f"{c} * {stride}" if stride != "0" else "0")
        return " + ".join(terms) if terms else "0"

    def loaded(self, ref: str) -> bool:
        """Whether value(ref) is a plain load (masked lanes read 0), not a computed expression."""
        return ref not in self.inline and ref not in self.provided

    def addr(self, ptr: str, shape: tuple, coords: list[str], mask: str) -> str:
        """The element addresses for a load or store under `mask`. `+ tl.where(mask, 0, 0)` gives the
        pointer the mask's shape when the coordinates are all scalars (a row's weight, a size-1 dim);
        it folds away in compilation."""
        off = f"{ptr} + {self.offset(shape, coords)}"
        tile = any("[" in c for i, c in enumerate(coords) if shape[i] != 1)  # a tile's coordinates: a block already
        return off if tile else f"{off} + tl.where({mask}, 0, 0)"

    def value(self, ref: str, coords: list[str], mask: str) -> str:
        """The value of `ref` at coords (in its compute type), as a temporary's name or a constant."""
        if ref in self.provided:
            return self.provided[ref]
        key = (ref, tuple(coords), mask)
        for scope in self._cache:
            if key in scope:
                return scope[key]
        node = self.inline.get(ref)
        if node is not None:
            v = EMITTERS[node.op](self, node, list(coords), mask)
        else:
            t = self.types[ref]
            v = self.t(f"tl.load({self.addr(self.ptr(ref), t.shape, coords, mask)}, mask={mask}, other=0)")
            if storage_type(t.dtype) != compute_type(t.dtype):
                v = self.t(f"{v}.to({compute_type(t.dtype)})")
        self._cache[-1][key] = v
        return v

    def unravel(self, flat: str, shape: tuple, prefix: str) -> list[str]:
        """Coordinates of the flat (C-order) index `flat` in shape: `prefix0, prefix1, ...` temporaries."""
        coords = ["0"] * len(shape)
        rest = flat
        for i in range(len(shape) - 1, -1, -1):
            d = shape[i]
            if d == 1:
                continue
            if i == 0 or all(s == 1 for s in shape[:i]):
                coords[i] = self.t(rest) if rest == flat else rest
                break
            size = self.dim(d)
            coords[i] = self.t(f"{rest} % {size}")
            rest = self.t(f"{rest} // {size}")
        return coords

    # -- the kernel text -------------------------------------------------------------------------------
    def params(self) -> list[str]:
        return self.outs + list(self.loads.values()) + list(self.dims) + self.extra

    def source(self, name: str) -> str:
        ps = self.params() + [f"{c}: tl.constexpr" for c in self.constexpr]
        return "\n".join(["@_jit", f"def {name}({', '.join(ps)}):"] + self.lines) + "\n"

    def host_args(self, out_names: list[str], ref_code: dict[str, str], extra: dict[str, str]) -> list[str]:
        return out_names + [ref_code[r] for r in self.loads] + list(self.dims) + [extra[e] for e in self.extra]
