"""Our matcher and XGrammar's side by side over tokenised documents: masks compared bit for bit at
every step, and timed. Used by test_vs_xgrammar.py and bench/grammar.py."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Walk:
    steps: int = 0
    equal: int = 0
    # steps where the masks differ, each (document, step, tokens only we allow, tokens only XGrammar allows)
    differences: list[tuple[int, int, list[int], list[int]]] = field(default_factory=list)
    # of those tokens, the ones where XGrammar's own accept_token agrees with our mask
    xgrammar_self_contradictions: int = 0
    ours_s: list[float] = field(default_factory=list)
    theirs_s: list[float] = field(default_factory=list)


def _bits(words: np.ndarray, vocab: int) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little")[:vocab].astype(bool)


def walk(docs: list[str], ours, theirs, tokenizer, stop_id: int) -> Walk:
    """Feed every document's tokens (then the stop token) to both matchers; compare masks first."""
    import xgrammar as xgr

    from compiler.grammar import GrammarMatcher, allocate_token_bitmask

    V = ours.vocab_size
    w = Walk()
    a = allocate_token_bitmask(1, V)
    b = xgr.allocate_token_bitmask(1, V)
    bn = b.numpy()
    for d, doc in enumerate(docs):
        ids = tokenizer.encode(doc, add_special_tokens=False) + [stop_id]
        m, xm = GrammarMatcher(ours), xgr.GrammarMatcher(theirs)
        for step, t in enumerate(ids):
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(a, 0)
            t1 = time.perf_counter()
            xm.fill_next_token_bitmask(b, 0)
            t2 = time.perf_counter()
            w.ours_s.append(t1 - t0)
            w.theirs_s.append(t2 - t1)
            w.steps += 1
            if (a == bn).all():
                w.equal += 1
            else:
                A, B = _bits(a, V), _bits(bn, V)
                only_ours, only_theirs = np.flatnonzero(A & ~B).tolist(), np.flatnonzero(B & ~A).tolist()
                w.differences.append((d, step, only_ours, only_theirs))
                for tok in only_ours + only_theirs:  # which of the two does XGrammar's accept_token side with?
                    took = xm.accept_token(tok)
                    if took:
                        xm.rollback(1)
                    w.xgrammar_self_contradictions += int(took == A[tok])
            assert m.accept_token(t), f"document {d} step {step}: we refuse token {t} of a valid document"
            assert xm.accept_token(t), f"document {d} step {step}: XGrammar refuses token {t}"
        assert m.is_terminated() and xm.is_terminated()
    return w


def time_fills(docs: list[str], make_matcher, bitmask, tokenizer, stop_id: int) -> np.ndarray:
    """Seconds per fill_next_token_bitmask of one engine alone, at every step of every document."""
    out = []
    for doc in docs:
        m = make_matcher()
        for t in tokenizer.encode(doc, add_special_tokens=False) + [stop_id]:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(bitmask, 0)
            out.append(time.perf_counter() - t0)
            m.accept_token(t)
    return np.array(out)
