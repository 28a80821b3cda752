"""fold_permutations: golden rewrite; channel spaces by dataflow; folding is exactly equal on
integer-valued graphs (sums of small integers are exact in any order), and within float rounding
on norms and a tiny Llama; takes that cannot be folded stay and are reported."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from passes import PASSES, Pass
from passes.fold_permutations import FoldPermutations, channel_space, channel_spaces, fold, permute_channels

from test_bfp import BEFORE, ids, with_weights


@dataclass(frozen=True)
class Bound(Pass):
    """fold_permutations after binding fixed weights: the golden text carries none."""

    name = "fold_permutations_bound"  # not registered
    weights: tuple = ()

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        g.weights.update({k: v for k, v in self.weights if k in g.params})
        return FoldPermutations().run(g)


GOLDEN_BEFORE = """graph @g(%x: f32[s0, 4]) {
  param @w1: f32[6, 4]
  param @b1: f32[6]
  param @norm: f32[6]
  param @w2: f32[3, 6]
  param @p: i64[6]
  %h: f32[s0, 6] = linear(%x, @w1, @b1)
  %n: f32[s0, 6] = rms_norm(%h, @norm) {eps = 1e-05, axes = 1}
  %a: f32[s0, 6] = silu(%n)
  %ap: f32[s0, 6] = take(%a, @p) {axis = -1}
  %w2p: f32[3, 6] = take(@w2, @p) {axis = -1}
  %y: f32[s0, 3] = linear(%ap, %w2p)
  return %y
}
"""
GOLDEN_AFTER = """graph @g(%x: f32[s0, 4]) {
  param @w1: f32[6, 4]
  param @b1: f32[6]
  param @norm: f32[6]
  param @w2: f32[3, 6]
  %h: f32[s0, 6] = linear(%x, @w1, @b1)
  %n: f32[s0, 6] = rms_norm(%h, @norm) {eps = 1e-05, axes = 1}
  %a: f32[s0, 6] = silu(%n)
  %y: f32[s0, 3] = linear(%a, @w2)
  return %y
}
"""


def test_golden_and_the_weights_it_stores(golden) -> None:
    rng = np.random.default_rng(0)
    p = rng.permutation(6)
    w = {"w1": rng.standard_normal((6, 4)), "b1": rng.standard_normal(6), "norm": rng.standard_normal(6),
         "w2": rng.standard_normal((3, 6)), "p": p}
    w = {k: v.astype(np.int64 if k == "p" else np.float32) for k, v in w.items()}
    out = golden(Bound(tuple(w.items())), GOLDEN_BEFORE, GOLDEN_AFTER)
    np.testing.assert_array_equal(out.weights["w1"], w["w1"][p])  # the rows that make %h's channels
    np.testing.assert_array_equal(out.weights["b1"], w["b1"][p])
    np.testing.assert_array_equal(out.weights["norm"], w["norm"][p])
    np.testing.assert_array_equal(out.weights["w2"], w["w2"][:, p])  # its own take, folded into storage
    assert "p" not in out.weights
    g = ir.parse(GOLDEN_BEFORE)
    g.weights.update(w)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    want = ir.run(g, [x])[0]
    assert np.abs(ir.run(out, [x])[0] - want).max() <= 1e-6 * np.abs(want).max()  # sums in another order


def test_registered_and_a_graph_without_takes_is_unchanged() -> None:
    assert PASSES["fold_permutations"] is FoldPermutations
    g = with_weights()
    out = FoldPermutations().run(g)
    assert out == g and out.same_weights(g)


# -- exact equality on integer-valued graphs ----------------------------------------------------
def integer_graph(C: int, F: int, *, plain_reader: bool, tied_head: bool, leak: bool) -> str:
    """Embedding -> scale -> residual stream of C channels read through takes by an MLP (F channels,
    its down projection read through another take) and a head; optionally a second reader of the
    stream without a take, a head tied to the embedding, and a stream value leaked as an output."""
    head = "@emb" if tied_head else "@head"
    extra = "  %z: f32[s0, 2] = linear(%s, @side)\n" if plain_reader else ""
    outs = ["%y"] + (["%z"] if plain_reader else []) + (["%s"] if leak else [])
    V = 7
    return f"""graph @g(%ids: i64[s0]) {{
  param @emb: f32[{V}, {C}]
  param @scale: f32[{C}]
  param @up: f32[{F}, {C}]
  param @upb: f32[{F}]
  param @down: f32[{C}, {F}]
  param @head: f32[{V}, {C}]
  param @side: f32[2, {C}]
  param @p: i64[{C}]
  param @q: i64[{F}]
  %e: f32[s0, {C}] = embedding(@emb, %ids)
  %s: f32[s0, {C}] = mul(%e, @scale)
  %sp: f32[s0, {C}] = take(%s, @p) {{axis = -1}}
  %upp: f32[{F}, {C}] = take(@up, @p) {{axis = -1}}
  %u: f32[s0, {F}] = linear(%sp, %upp, @upb)
  %r: f32[s0, {F}] = relu(%u)
  %rq: f32[s0, {F}] = take(%r, @q) {{axis = -1}}
  %downq: f32[{C}, {F}] = take(@down, @q) {{axis = -1}}
  %d: f32[s0, {C}] = linear(%rq, %downq)
  %res: f32[s0, {C}] = add(%s, %d)
  %resp: f32[s0, {C}] = take(%res, @p) {{axis = -1}}
  %hp: f32[{V}, {C}] = take({head}, @p) {{axis = -1}}
  %y: f32[s0, {V}] = linear(%resp, %hp)
{extra}  return {", ".join(outs)}
}}
"""


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 9), st.integers(2, 9), st.integers(1, 6), st.booleans(), st.booleans(), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_folding_is_exactly_equal(C: int, F: int, seq: int, plain_reader: bool, tied_head: bool, leak: bool,
                                  seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = ir.parse(integer_graph(C, F, plain_reader=plain_reader, tied_head=tied_head, leak=leak))
    for k, t in g.params.items():  # small integers: every sum is exact, in any order
        g.weights[k] = (rng.permutation(t.shape[0]) if t.dtype.kind == "int"
                        else rng.integers(-3, 4, t.shape).astype(np.float32))
    out, stay = fold(g)
    ir.verify(out)
    x = rng.integers(0, 7, seq)
    for a, b in zip(ir.run(g, [x]), ir.run(out, [x])):
        np.testing.assert_array_equal(a, b)
    takes = [n.name for n in out.nodes if n.op == "take"]
    assert takes == stay
    if leak:  # the stream is an output: its takes (and the head's tied to it) stay; the MLP's go
        assert "resp" in stay and "sp" in stay and "rq" not in stay
    else:
        assert stay == []
        assert out.params.keys() == g.params.keys() - {"p", "q"}
    assert fold(out)[0] == out  # idempotent


def test_a_selection_take_is_rewritten_not_removed() -> None:
    """A take of 3 of the 5 channels: after the space is permuted by p it reads p⁻¹[idx]."""
    g = ir.parse("""graph @g(%x: f32[s0, 3]) {
  param @w: f32[5, 3]
  param @v: f32[2, 5]
  param @p: i64[5]
  param @sel: i64[3]
  %h: f32[s0, 5] = linear(%x, @w)
  %hp: f32[s0, 5] = take(%h, @p) {axis = -1}
  %vp: f32[2, 5] = take(@v, @p) {axis = -1}
  %y: f32[s0, 2] = linear(%hp, %vp)
  %s: f32[s0, 3] = take(%h, @sel) {axis = 1}
  return %y, %s
}
""")
    rng = np.random.default_rng(3)
    g.weights = {"w": rng.integers(-3, 4, (5, 3)).astype(np.float32), "v": rng.integers(-3, 4, (2, 5)).astype(np.float32),
                 "p": np.array([4, 2, 0, 1, 3]), "sel": np.array([1, 1, 4])}
    out, stay = fold(g)
    assert stay == ["s"] and out.node("s").operands[1] == "@sel.folded.0"
    x = rng.integers(-3, 4, (4, 3)).astype(np.float32)
    for a, b in zip(ir.run(g, [x]), ir.run(out, [x])):
        np.testing.assert_array_equal(a, b)


def test_takes_left_in_place_are_reported(capsys) -> None:
    g = ir.parse(integer_graph(4, 3, plain_reader=False, tied_head=False, leak=True))
    rng = np.random.default_rng(0)
    g.weights = {k: rng.permutation(t.shape[0]) if t.dtype.kind == "int" else rng.standard_normal(t.shape).astype(np.float32)
                 for k, t in g.params.items()}
    FoldPermutations().run(g)
    assert "take(s) left in place" in capsys.readouterr().err


# -- channel spaces -----------------------------------------------------------------------------
def test_channel_spaces_of_the_block() -> None:
    g = with_weights()
    spaces = {sp.size: sp for sp in channel_spaces(g)}
    assert sorted(spaces) == [8, 12]
    resid, mlp = spaces[8], spaces[12]
    params = lambda sp: sorted((r, a) for r, a in sp.members if r[0] == "@")  # noqa: E731
    assert params(resid) == [("@down", 0), ("@emb", 1), ("@gate", 1), ("@head.weight", 1), ("@norm", 0), ("@up", 1)]
    assert params(mlp) == [("@down", 1), ("@gate", 0), ("@up", 0)]
    assert resid.readers(g) == ["gate", "up", "head.weight"]
    assert ("%ms", 1) not in resid.members and ("%sq", 1) in resid.members  # the mean over channels stops it


def test_spaces_stop_at_graph_inputs_outputs_and_reshapes() -> None:
    as_input = BEFORE.replace("%ids: i64[s0]", "%x: f32[s0, 8]").replace("  %x: f32[s0, 8] = embedding(@emb, %ids)\n", "")
    assert [sp.size for sp in channel_spaces(with_weights(as_input))] == [12]  # the residual is a graph input
    assert channel_space(with_weights(as_input), "%x") is None
    as_output = BEFORE.replace("return %y", "return %y, %m")
    assert [sp.size for sp in channel_spaces(with_weights(as_output))] == [8]  # the MLP's %m is an output
    reshaped = BEFORE.replace("%m: f32[s0, 12] = mul(%a, %u)", "%m0: f32[s0, 12] = mul(%a, %u)\n"
                              "  %m: f32[s0, 12] = reshape(%m0) {shape = [s0, 12]}")
    assert [sp.size for sp in channel_spaces(with_weights(reshaped))] == [8]


FUSED_NORM = BEFORE.replace("%h: f32[s0, 8] = mul(@norm, %xn)", "%h: f32[s0, 8] = rms_norm(%x, @norm) {eps = 1e-05, axes = 1}")
LAYER_NORM = BEFORE.replace("%h: f32[s0, 8] = mul(@norm, %xn)", "%h: f32[s0, 8] = layer_norm(%x, @norm, @nb) {eps = 1e-05, axes = 1}"
                            ).replace("param @norm: f32[8]", "param @norm: f32[8]\n  param @nb: f32[8]")


@pytest.mark.parametrize("text", [BEFORE, FUSED_NORM, LAYER_NORM], ids=["decomposed", "rms_norm", "layer_norm"])
def test_permuting_spaces_is_exact_on_the_block(text: str) -> None:
    g = with_weights(text)
    assert sorted(sp.size for sp in channel_spaces(g)) == [8, 12]
    rng = np.random.default_rng(0)
    perms = {sp.size: (sp, rng.permutation(sp.size)) for sp in channel_spaces(g)}
    p = permute_channels(g, list(perms.values()))
    want = ir.run(g, [ids(9)])[0]
    assert np.abs(ir.run(p, [ids(9)])[0] - want).max() <= 1e-6 * np.abs(want).max()  # float sums in another order
    rows, cols = perms[12][1], perms[8][1]  # new channel j is old channel perm[j]
    np.testing.assert_array_equal(p.weights["gate"], g.weights["gate"][rows][:, cols])
    np.testing.assert_array_equal(p.weights["down"], g.weights["down"][cols][:, rows])
    np.testing.assert_array_equal(p.weights["emb"], g.weights["emb"][:, cols])


@pytest.fixture(scope="module")
def llama() -> ir.Graph:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    return export(tiny("llama"), (torch.randint(0, 128, (1, 8)),)).graph


def test_llama_spaces(llama: ir.Graph) -> None:
    spaces = channel_spaces(llama)
    assert [sp.size for sp in spaces] == [64, 128, 128]  # the residual stream, then each MLP; not o_proj's input
    resid = spaces[0]
    assert ("@model.embed_tokens.weight", 1) in resid.members and ("@model.norm.weight", 0) in resid.members
    assert {w.split(".")[-2] for w in resid.readers(llama)} == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",
                                                                "lm_head"}
    assert [w.split(".")[-2] for w in spaces[1].readers(llama)] == ["down_proj"]


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 20))
def test_permutation_folding_is_exact_on_tiny_llama(llama: ir.Graph, seed: int, seq: int) -> None:
    rng = np.random.default_rng(seed)
    perms = [(sp, rng.permutation(sp.size)) for sp in channel_spaces(llama)]
    g = permute_channels(llama, perms)
    assert g == llama and not g.same_weights(llama)  # same text, permuted weights
    ids = rng.integers(0, 128, (1, seq))
    want, got = ir.run(llama, [ids])[0], ir.run(g, [ids])[0]
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())  # float sums in another order
