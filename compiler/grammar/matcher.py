"""`GrammarMatcher`: where one output is in the grammar, and which tokens may come next.

A matcher's state is a set of stacks of automaton positions (one stack per way the output so far
can be parsed) plus whether the output is already a complete sentence. States are interned in the
compiled grammar, so every matcher of it shares them, and each state memoises its mask and its
successor per token: a state seen before costs a dictionary lookup and a 6 KB copy. A new state's
mask is the OR of its top positions' precomputed accepted sets, plus those uncertain tokens whose
rest fits the stack below (compiled.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ir.errors import GrammarError

from .compiled import CompiledGrammar, _words


class _State:
    __slots__ = ("stacks", "complete", "terminated", "mask", "masks_some", "next")

    def __init__(self, stacks: frozenset, complete: bool, terminated: bool):
        self.stacks, self.complete, self.terminated = stacks, complete, terminated
        self.mask: np.ndarray | None = None
        self.masks_some = True
        self.next: dict[int, _State | None] = {}


def _intern(c: CompiledGrammar, stacks: frozenset, complete: bool, terminated: bool = False) -> _State:
    key = (stacks, complete, terminated)
    st = c.states.get(key)
    if st is None:
        st = c.states[key] = _State(stacks, complete, terminated)
    return st


def allocate_token_bitmask(batch: int, vocab_size: int) -> np.ndarray:
    """int32 [batch, ceil(vocab / 32)], all tokens allowed (XGrammar's layout)."""
    return np.full((batch, -(-vocab_size // 32)), -1, np.int32)


class GrammarMatcher:
    """Follows one output through a compiled grammar; see the package docstring for the API."""

    def __init__(self, compiled: CompiledGrammar):
        self.compiled = compiled
        ready, ends = compiled.closure((compiled.automaton.start,))
        self._initial = _intern(compiled, frozenset(ready), ends)
        self._history = [self._initial]

    # -- masks -------------------------------------------------------------------------------------
    def fill_next_token_bitmask(self, bitmask: Any, index: int = 0) -> bool:
        """Write the allowed next tokens into row `index` of `bitmask` (NumPy or a torch tensor);
        returns whether any token is masked out."""
        st = self._history[-1]
        m = st.mask if st.mask is not None else self._mask(st)
        if isinstance(bitmask, np.ndarray):
            bitmask[index] = m
        else:
            import torch

            bitmask[index].copy_(torch.from_numpy(m))
        return st.masks_some

    def next_token_mask(self) -> np.ndarray:
        """The allowed next tokens as int32 words (a read-only view; copy it to keep it)."""
        st = self._history[-1]
        return st.mask if st.mask is not None else self._mask(st)

    def _mask(self, st: _State) -> np.ndarray:
        c = self.compiled
        words = np.zeros(c.words, np.int32)
        if not st.terminated:
            for s in st.stacks:
                p, context = s[-1], s[:-1]
                words |= c.accepted(p)
                fits = [ts for suffix, ts in c.uncertain(p) if c.suffix_fits(context, suffix)]
                if fits:
                    allowed = np.zeros(c.vocab_size, bool)
                    allowed[np.concatenate(fits)] = True
                    words |= _words(allowed)
            if st.complete:
                words |= c.stop_words
        words.flags.writeable = False
        st.mask, st.masks_some = words, not (words == -1).all()
        return words

    # -- moving ------------------------------------------------------------------------------------
    def accept_token(self, token_id: int) -> bool:
        """Take the token if the grammar allows it (True); otherwise change nothing (False)."""
        st = self._history[-1]
        t = int(token_id)
        if t in st.next:
            nxt = st.next[t]
        else:
            nxt = st.next[t] = self._advance(st, t)
        if nxt is None:
            return False
        self._history.append(nxt)
        return True

    def _advance(self, st: _State, t: int) -> _State | None:
        c = self.compiled
        if st.terminated or not 0 <= t < c.vocab_size:
            return None
        if t in c.info.stop_token_ids:
            return _intern(c, frozenset(), False, True) if st.complete else None
        if not c.usable[t]:
            return None
        return self._read(st, c.decoded[t])

    def _read(self, st: _State, data: bytes) -> _State | None:
        c = self.compiled
        stacks: set = set()
        complete = False
        for s in st.stacks:
            cur, ends = c._walk((s,), data)
            stacks |= cur
            complete |= len(data) in ends
        if not stacks and not complete:
            return None
        return _intern(c, frozenset(stacks), complete)

    def accept_string(self, text: str | bytes) -> bool:
        """Take raw text (not tokens) if the grammar allows it; one step for `rollback`."""
        st = self._history[-1]
        data = text.encode() if isinstance(text, str) else bytes(text)
        nxt = None if st.terminated else (self._read(st, data) if data else st)
        if nxt is None:
            return False
        self._history.append(nxt)
        return True

    def rollback(self, n: int = 1) -> None:
        """Undo the last `n` accepted tokens."""
        if not 0 <= n < len(self._history):
            raise GrammarError(f"cannot roll back {n} tokens: {len(self._history) - 1} have been accepted since the start")
        del self._history[len(self._history) - n:]

    def is_terminated(self) -> bool:
        """A stop token was accepted: the output is finished."""
        return self._history[-1].terminated

    def is_complete(self) -> bool:
        """The output so far is a complete sentence (a stop token would be accepted)."""
        return self._history[-1].complete

    def reset(self) -> None:
        self._history = [self._initial]
