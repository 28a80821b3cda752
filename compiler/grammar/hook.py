"""Grammars in decoding: a `DecodingHook` for `compiled.generate(..., grammar=...)`, and a Hugging
Face `LogitsProcessor` for `model.generate(..., logits_processor=[...])`.

The hook asks for the masked step graph (`uses_bitmask`): the `logits_mask` pass puts a
`mask_logits` op at the end of the compiled graph, fed each step by the matchers' bitmask, so the
mask is applied inside the compiled model (NumPy on cpu, a Triton kernel on cuda).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from ir.errors import CompileError

from ..generate import DecodingHook
from .compiled import CompiledGrammar, compile_grammar
from .grammar import Grammar
from .matcher import GrammarMatcher
from .tokenizer import TokenizerInfo


GENERATION_MAX_WS = 2


def resolve(grammar: Any = None, json_schema: Any = None, tokenizer: Any = None,
            cache: dict | None = None) -> CompiledGrammar:
    """A compiled grammar from generate()'s arguments: `grammar` (lark EBNF text with a `start`
    rule, a `Grammar` or a `CompiledGrammar`) or `json_schema` (a dict or JSON text)."""
    if (grammar is None) == (json_schema is None):
        raise CompileError("give either grammar= or json_schema=, not both")
    if isinstance(grammar, CompiledGrammar):
        return grammar
    if tokenizer is None:
        raise CompileError("a grammar is compiled against the tokenizer's vocabulary: pass tokenizer= "
                           "(a Hugging Face tokenizer or a compiler.grammar.TokenizerInfo), or a CompiledGrammar")
    info = tokenizer if isinstance(tokenizer, TokenizerInfo) else TokenizerInfo.from_huggingface(tokenizer)
    key = (id(tokenizer), grammar if isinstance(grammar, str) else None,
           json.dumps(json_schema, sort_keys=True) if isinstance(json_schema, dict) else json_schema)
    if cache is not None and key in cache and not isinstance(grammar, Grammar):
        return cache[key]
    if json_schema is not None:
        # generation's layout: optional whitespace, at most GENERATION_MAX_WS characters a run, so a
        # model can neither be forced into a space it never writes nor loop on whitespace; and no
        # keys or items beyond those the schema names (every output still validates)
        g = Grammar.from_json_schema(json_schema, any_whitespace=True, max_whitespace=GENERATION_MAX_WS,
                                     strict_mode=True)
    else:
        g = grammar if isinstance(grammar, Grammar) else Grammar.from_lark(grammar)
    compiled = compile_grammar(g, info)
    if cache is not None:
        cache[key] = compiled
    return compiled


class GrammarHook(DecodingHook):
    """Constrain every row of a batch to the grammar: one matcher per row."""

    uses_bitmask = True

    def __init__(self, compiled: CompiledGrammar):
        self.compiled = compiled
        self.matchers: list[GrammarMatcher] = []

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(self.compiled.info.stop_token_ids)

    def token_bitmask(self, input_ids: np.ndarray, vocab: int) -> np.ndarray:
        B = input_ids.shape[0]
        if not self.matchers:
            self.matchers = [GrammarMatcher(self.compiled) for _ in range(B)]
        words = -(-vocab // 32)
        if self.compiled.vocab_size > vocab:
            raise CompileError(f"the grammar was compiled for a vocabulary of {self.compiled.vocab_size} tokens, "
                               f"but the model's logits have {vocab}")
        out = np.zeros((B, words), np.int32)  # ids past the tokenizer's vocabulary: never allowed
        for i, m in enumerate(self.matchers):
            if m.is_terminated():
                out[i] = -1  # a finished row: generate() writes the pad token there anyway
            else:
                out[i, :self.compiled.words] = m.next_token_mask()
        return out

    def accept_token(self, tokens: np.ndarray) -> None:
        for i, (m, t) in enumerate(zip(self.matchers, tokens.tolist())):
            if not m.is_terminated() and not m.accept_token(t):
                raise CompileError(f"row {i}: token {t} ({self.compiled.decoded[t]!r}) is not allowed by the grammar; "
                                   "a process_logits hook must not unmask tokens the grammar forbids")


class GrammarLogitsProcessor:
    """A Hugging Face `LogitsProcessor`: `model.generate(ids, logits_processor=[GrammarLogitsProcessor(g)])`.
    Stop tokens are allowed only where the output is a complete sentence."""

    def __init__(self, compiled: CompiledGrammar):
        self.compiled = compiled
        self.matchers: list[GrammarMatcher] = []
        self._prompt_len = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if not self.matchers:
            self.matchers = [GrammarMatcher(self.compiled) for _ in range(input_ids.shape[0])]
            self._prompt_len = input_ids.shape[1]
        elif input_ids.shape[1] > self._prompt_len:
            for m, t in zip(self.matchers, input_ids[:, -1].tolist()):
                if not m.is_terminated():
                    m.accept_token(t)
        words = np.stack([m.next_token_mask() if not m.is_terminated() else np.full(self.compiled.words, -1, np.int32)
                          for m in self.matchers])
        V = scores.shape[-1]
        allowed = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[:, :V].astype(bool)
        if allowed.shape[1] < V:
            allowed = np.pad(allowed, ((0, 0), (0, V - allowed.shape[1])))
        return scores.masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))
