"""`compile_grammar`: a grammar's automaton against a vocabulary, with token sets per position.

The matcher holds a set of stacks of positions (automaton.py). Whether a token fits depends mostly
on the top position alone, so that is computed once per position, for every token, here (the
adaptive token-mask cache of XGrammar, in our own form):

    accepted   the token's bytes can be read without finishing the top rule's call: allowed
               whatever is below it on the stack (every stack can still complete a sentence);
    rejected   no way to read it, even by finishing the call and going on below;
    uncertain  it can finish the call after `offset` bytes with bytes left: whether the rest fits
               depends on the stack below, and is checked when a mask is made (with a memo).

The walk over the vocabulary is vectorised: every token's bytes go through the top rule's DFA at
once (a padded byte matrix, one NumPy step per byte column), noting where the rule may end with
bytes left; only tokens whose next byte would enter a call are walked one by one, with stacks.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from .automaton import build
from .grammar import Grammar

if TYPE_CHECKING:
    from .tokenizer import TokenizerInfo

SENTINEL = -1  # bottom of a stack walked without its context (per-position precomputation)


class CompiledGrammar:
    """A grammar compiled against a tokenizer: build once, share between matchers (not threads)."""

    def __init__(self, grammar: Grammar, info: "TokenizerInfo"):
        t0 = time.perf_counter()
        self.grammar, self.info = grammar, info
        a = self.automaton = build(grammar)
        self.vocab_size = V = info.vocab_size
        self.words = -(-V // 32)
        vocab = _vocab(info)
        self.decoded, self.usable, self.stop_words = vocab["decoded"], vocab["usable"], vocab["stop_words"]
        self._ids, self._lens, self._bytes, self._by_first = vocab["ids"], vocab["lens"], vocab["bytes"], vocab["by_first"]
        self._rows: dict[int, list[int]] = {}  # trans rows as lists, for scalar walks (made when walked)
        self._calls, self._final, self._tail = a.calls, a.final.tolist(), a.tail.tolist()
        self._has_bytes = a.has_bytes.tolist()
        self._closures: dict[tuple[int, ...], tuple[tuple[tuple[int, ...], ...], bool]] = {}
        self._suffix_memo: dict[tuple[tuple[int, ...], bytes], bool] = {}
        self.states: dict = {}  # matcher.py's interned states, shared by every matcher of this grammar
        # per position, computed the first time decoding reaches it (lazy): accepted words, uncertain
        self._accepted: dict[int, np.ndarray] = {}
        self._uncertain: dict[int, list[tuple[bytes, np.ndarray]]] = {}
        self._enters_call = self._call_bytes()
        self.compile_s = time.perf_counter() - t0

    def accepted(self, p: int) -> np.ndarray:
        hit = self._accepted.get(p)
        if hit is None:
            self._classify(p)
            hit = self._accepted[p]
        return hit

    def uncertain(self, p: int) -> list[tuple[bytes, np.ndarray]]:
        if p not in self._uncertain:
            self._classify(p)
        return self._uncertain[p]

    def row(self, p: int) -> list[int]:
        r = self._rows.get(p)
        if r is None:
            r = self._rows[p] = self.automaton.trans[p].tolist()
        return r

    # -- the vocabulary walk -----------------------------------------------------------------------
    def _call_bytes(self) -> np.ndarray:
        """bool [positions, 256]: the bytes a position can read by first entering a call (or after a
        call that may be empty): a token that goes on with one of those needs the stack walk."""
        a = self.automaton
        readable = a.trans >= 0
        out = np.zeros((a.n_positions, 256), bool)
        for p in range(a.n_positions):
            if a.calls[p]:
                for s in self.closure((SENTINEL, p))[0]:
                    if s != (SENTINEL, p):
                        out[p] |= readable[s[-1]]
        return out

    def _classify(self, p: int) -> None:
        """Fill accepted[p] and uncertain[p] for every token, starting from position p."""
        a = self.automaton
        # only tokens whose first byte the position reads, or that may enter a call with it
        firsts = np.flatnonzero((a.trans[p] >= 0) | self._enters_call[p])
        rows = np.concatenate([self._by_first[b] for b in firsts]) if len(firsts) else np.zeros(0, np.int64)
        cur = np.full(len(rows), p, np.int32)
        accepted, walk, pop_rows, pop_at = [rows[:0]], [rows[:0]], [rows[:0]], [rows[:0]]
        j = 0
        while rows.size:
            end = self._lens[rows] == j
            accepted.append(rows[end])
            rows, cur = rows[~end], cur[~end]
            if not rows.size:
                break
            b = self._bytes[rows, j]
            if j:  # (at j = 0, calls and returns are other stacks of the matcher's state)
                slow = self._enters_call[cur, b]
                walk.append(rows[slow])
                rows, cur, b = rows[~slow], cur[~slow], b[~slow]
                ends = a.final[cur]  # the rule may end here, the rest read below it: uncertain
                pop_rows.append(rows[ends])
                pop_at.append(np.full(int(ends.sum()), j))
            nxt = a.trans[cur, b]
            ok = nxt >= 0
            rows, cur = rows[ok], nxt[ok]
            j += 1
        allowed = np.zeros(self.vocab_size, bool)
        allowed[self._ids[np.concatenate(accepted)]] = True
        groups: dict[bytes, list[int]] = {}
        walked = np.concatenate(walk)
        pr, pa = np.concatenate(pop_rows), np.concatenate(pop_at)
        keep = ~np.isin(pr, walked) & ~allowed[self._ids[pr]]
        for row, off in zip(pr[keep].tolist(), pa[keep].tolist()):
            t = int(self._ids[row])
            groups.setdefault(self.decoded[t][off:], []).append(t)
        for row in walked.tolist():
            t = int(self._ids[row])
            data = self.decoded[t]
            stacks, ends = self._walk(((SENTINEL, p),), data)
            if stacks or len(data) in ends:
                allowed[t] = True
            else:
                for off in sorted(set(ends)):
                    groups.setdefault(data[off:], []).append(t)
        self._accepted[p] = _words(allowed)
        self._uncertain[p] = [(suffix, np.array(sorted(set(ts)), np.int64)) for suffix, ts in groups.items()]

    # -- stacks ------------------------------------------------------------------------------------
    def closure(self, stack: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], ...], bool]:
        """The stacks that `stack` stands for, each topped by a position that reads a byte (calls
        entered, finished rules returned from), and whether its bottom rule can end here."""
        hit = self._closures.get(stack)
        if hit is not None:
            return hit
        ready, ends, seen, todo = [], False, {stack}, [stack]
        while todo:
            s = todo.pop()
            if not s or s[-1] == SENTINEL:
                ends = True
                continue
            p = s[-1]
            if self._has_bytes[p]:
                ready.append(s)
            nexts = [s[:-1] + ((callee,) if self._tail[ret] else (ret, callee)) for callee, ret in self._calls[p]]
            if self._final[p]:
                nexts.append(s[:-1])
            for n in nexts:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        hit = self._closures[stack] = (tuple(ready), ends)
        return hit

    def _walk(self, stacks: tuple[tuple[int, ...], ...], data: bytes) -> tuple[set[tuple[int, ...]], list[int]]:
        """Read `data` from ready stacks: the ready stacks after it, and the offsets at which the
        bottom rule ended."""
        row, closure = self.row, self.closure
        ends: list[int] = []
        cur = set(stacks)
        for i, b in enumerate(data):
            nxt: set[tuple[int, ...]] = set()
            for s in cur:
                t = row(s[-1])[b]
                if t >= 0:
                    ready, end = closure(s[:-1] + (t,))
                    nxt.update(ready)
                    if end:
                        ends.append(i + 1)
            cur = nxt
            if not cur:
                break
        return cur, ends

    def suffix_fits(self, context: tuple[int, ...], suffix: bytes) -> bool:
        """Can `suffix` be read once the call on top of `context` has finished?"""
        key = (context, suffix)
        hit = self._suffix_memo.get(key)
        if hit is None:
            ready, _ = self.closure(context)
            stacks, ends = self._walk(ready, suffix)
            hit = self._suffix_memo[key] = bool(stacks) or len(suffix) in ends
        return hit

    def stats(self) -> dict[str, float]:
        unc = [sum(len(ts) for _, ts in u) for u in self._uncertain.values()]
        return {"positions": self.automaton.n_positions, "compile_s": round(self.compile_s, 3),
                "classified": len(self._accepted),
                "uncertain_max": max(unc, default=0), "uncertain_mean": float(np.mean(unc)) if unc else 0.0}


def _words(allowed: np.ndarray) -> np.ndarray:
    """bool [V] -> int32 words, bit j % 32 of word j // 32 (XGrammar's and mask_logits' layout)."""
    pad = -allowed.shape[-1] % 32
    return np.packbits(np.pad(allowed, (0, pad)), bitorder="little").view("<i4").astype(np.int32)


_VOCABS: dict[int, tuple["TokenizerInfo", dict]] = {}
_COMPILED: "OrderedDict[tuple[int, str], CompiledGrammar]" = OrderedDict()
CACHE_SIZE = 64


def _vocab(info: "TokenizerInfo") -> dict:
    """Per tokenizer, once: the tokens' bytes as a padded matrix, grouped by first byte."""
    hit = _VOCABS.get(id(info))
    if hit is not None and hit[0] is info:
        return hit[1]
    V = info.vocab_size
    decoded = list(info.decoded) + [b""] * (V - len(info.decoded))
    never = set(info.special_token_ids) | set(info.stop_token_ids)
    usable = np.array([bool(d) and i not in never for i, d in enumerate(decoded)], bool)
    ids = np.flatnonzero(usable)
    lens = np.array([len(decoded[i]) for i in ids], np.int64)
    m = np.zeros((len(ids), max(int(lens.max(initial=0)), 1)), np.uint8)
    for row, i in enumerate(ids):
        d = decoded[i]
        m[row, :len(d)] = np.frombuffer(d, np.uint8)
    first = m[:, 0]
    by_first = [np.flatnonzero(first == b) for b in range(256)]
    out = {"decoded": decoded, "usable": usable, "ids": ids, "lens": lens, "bytes": m, "by_first": by_first,
           "stop_words": _words(np.isin(np.arange(V), list(info.stop_token_ids)))}
    _VOCABS[id(info)] = (info, out)
    return out


def compile_grammar(grammar: Grammar | str, info: "TokenizerInfo", cache: bool = True) -> CompiledGrammar:
    """A `Grammar` (or lark EBNF text) compiled against `info`'s vocabulary. Token masks are computed
    lazily (the first time decoding reaches a position). Lark text is cached per (tokenizer, text),
    so the same grammar again is free; a `Grammar` object is compiled afresh (cache=False: always)."""
    if not isinstance(grammar, str):
        return CompiledGrammar(grammar, info)
    key = (id(info), grammar)
    hit = _COMPILED.get(key) if cache else None
    if hit is not None and hit.info is info:
        _COMPILED.move_to_end(key)
        return hit
    out = CompiledGrammar(Grammar.from_lark(grammar), info)
    if cache:
        _COMPILED[key] = out
        while len(_COMPILED) > CACHE_SIZE:
            _COMPILED.popitem(last=False)
    return out
