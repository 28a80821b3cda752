"""Grammar-constrained decoding: grammars compiled against a tokenizer's vocabulary into token masks.

    from compiler.grammar import Grammar, TokenizerInfo, compile_grammar, GrammarMatcher, allocate_token_bitmask

    info = TokenizerInfo.from_huggingface(tokenizer)           # every token's bytes, and the stop tokens
    grammar = Grammar.from_lark(text)                          # or .json(), .from_json_schema(s), .from_regex(p)
    compiled = compile_grammar(grammar, info)                  # per-position token sets, computed once
    m = GrammarMatcher(compiled)
    mask = allocate_token_bitmask(1, info.vocab_size)          # int32 [batch, ceil(vocab / 32)], like XGrammar
    m.fill_next_token_bitmask(mask, 0)                         # bit j % 32 of word j // 32: token j allowed
    m.accept_token(token_id)                                   # False (and no change) for a token not allowed
    m.rollback(1); m.is_terminated(); m.reset()

A token is allowed if and only if some continuation of the output can still complete a sentence of
the grammar; a stop token is allowed exactly when the output so far is a complete sentence.

Where things live:
    grammar.py     `Grammar`: lark EBNF text (parsed by lark) -> an expression tree per rule
    regex.py       regular expressions (Python `re` syntax) -> the same expression tree
    json_schema.py JSON Schema -> lark EBNF text
    automaton.py   expression trees -> one byte-level DFA per rule, with calls to recursive rules
    tokenizer.py   `TokenizerInfo`: the bytes of every token (byte-level BPE, SentencePiece, WordPiece)
    compiled.py    `compile_grammar`: token sets per automaton position (accepted / rejected / uncertain)
    matcher.py     `GrammarMatcher`: the persistent stack set, masks (cached per state), rollback
"""
from .compiled import CompiledGrammar, compile_grammar
from .grammar import Grammar
from .matcher import GrammarMatcher, allocate_token_bitmask
from .tokenizer import TokenizerInfo

__all__ = ["CompiledGrammar", "Grammar", "GrammarMatcher", "TokenizerInfo", "allocate_token_bitmask", "compile_grammar"]
