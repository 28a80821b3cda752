"""A decoding hook: words the model must never write, masked inside the compiled graph.

    python examples/banned_words.py          # a tiny random Llama: what it says, then with those words banned

`BannedTokens` asks for the masked step graph (`uses_bitmask = True`): the `logits_mask` pass adds
a `mask_logits` op fed by a bitmask input, so the mask is applied where the logits are made, and
the backend may fuse it. `accept_token` sees every chosen token (here: counted).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from compiler.generate import DecodingHook, allowed_bitmask


class BannedTokens(DecodingHook):
    """Never choose any of `banned` (token ids)."""

    uses_bitmask = True

    def __init__(self, banned: list[int]):
        self.banned = sorted(set(banned))
        self.accepted = 0

    def token_bitmask(self, input_ids: np.ndarray, vocab: int) -> np.ndarray:
        allowed = np.ones((input_ids.shape[0], vocab), bool)
        allowed[:, self.banned] = False
        return allowed_bitmask(allowed)

    def accept_token(self, tokens: np.ndarray) -> None:
        self.accepted += 1


def banned_words(tokenizer, words: list[str]) -> BannedTokens:
    """The first token of each word (with and without a leading space) is banned."""
    ids = set()
    for w in words:
        for v in (w, " " + w.lstrip()):
            toks = tokenizer.encode(v, add_special_tokens=False)
            if toks:
                ids.add(toks[0])
    return BannedTokens(sorted(ids))


if __name__ == "__main__":
    import compiler

    sys.path.insert(0, str(Path(__file__).parent))
    from llama import build  # noqa: E402

    model, (ids,) = build()
    compiled = compiler.compile(model, target="cpu")
    free = compiled.generate(ids, max_new_tokens=12)[0, ids.shape[1]:]
    hook = BannedTokens(free[:3].tolist())  # ban what it said first
    held = compiled.generate(ids, max_new_tokens=12, hooks=[hook])[0, ids.shape[1]:]
    print("free:  ", free.tolist())
    print("banned:", hook.banned, "->", held.tolist(), f"({hook.accepted} tokens accepted)")
    assert not set(held.tolist()) & set(hook.banned)
