"""Expression trees -> byte-level automata: one DFA per recursive rule, with calls between them.

Every rule that is not part of a recursion is inlined into its users (strings, numbers, whitespace
become plain DFA states), and a rule that calls itself only at the end of its alternatives
(`r: "a" r | "b"`) becomes a loop. What is left is a pushdown automaton whose stack holds one DFA
state (a *position*) per unfinished call to a recursive rule -- for JSON, one per open object/array.

Positions are global integers. Per position: `trans[p, byte]` (next position in the same rule, or -1),
`calls[p]` (callee's start, position to return to), `final[p]` (the rule may end here). Every
position can still reach the end of its rule (dead states are trimmed), so every stack the matcher
holds can still complete a sentence.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ir.errors import GrammarError

from .grammar import Alt, Chars, Expr, Goto, Grammar, Ref, Repeat, Seq

MAX_STATES = 200_000  # a grammar whose automata grow past this is refused, not built for minutes
MAX_WORK = 2_000_000  # NFA states visited while determinizing: a budget that fails fast (about 1 s)


@dataclass
class Automaton:
    rules: list[str]                      # recursive rules (and the start rule), by id
    start: int                            # the start rule's first position
    trans: np.ndarray                     # int32 [positions, 256]
    calls: list[tuple[tuple[int, int], ...]]  # per position: (callee start, return position)
    final: np.ndarray                     # bool [positions]
    rule_of: np.ndarray                   # int32 [positions]
    has_bytes: np.ndarray = field(init=False)
    tail: np.ndarray = field(init=False)  # a return position that can only end its rule: not pushed

    def __post_init__(self) -> None:
        self.has_bytes = (self.trans >= 0).any(1)
        has_calls = np.array([bool(c) for c in self.calls], bool)
        self.tail = self.final & ~self.has_bytes & ~has_calls

    @property
    def n_positions(self) -> int:
        return len(self.final)


def build(grammar: Grammar) -> Automaton:
    try:
        return _build(grammar)
    except RecursionError:
        raise GrammarError("the grammar nests too deeply to build (Python's recursion limit)") from None


def _size(e: Expr, memo: dict) -> float:
    """An upper estimate of the NFA states of `e` (bounded repetitions multiply)."""
    k = id(e)
    if k not in memo:
        if isinstance(e, Chars):
            memo[k] = 2
        elif isinstance(e, (Seq, Alt)):
            memo[k] = 1 + sum(_size(x, memo) for x in e.items)
        elif isinstance(e, Repeat):
            memo[k] = 1 + _size(e.item, memo) * max(e.min, e.max if e.max is not None else e.min + 1, 1)
        else:
            memo[k] = 1
    return memo[k]


def _build(grammar: Grammar) -> Automaton:
    rules, gotos = _prepare(grammar)
    est = sum(_size(e, {}) for e in [*rules.values(), *gotos.values()])
    if est > MAX_STATES:
        raise GrammarError(f"the grammar's automata would have about {int(est)} states (limit {MAX_STATES}); "
                           "large or nested bounded repetitions are the usual cause")
    nfas = {name: _NFA.of(expr, gotos) for name, expr in rules.items()}
    names = [grammar.start] + sorted(n for n in rules if n != grammar.start)
    ids = {n: i for i, n in enumerate(names)}
    dfas = [_determinize(nfas[n], ids) for n in names]
    offsets = np.cumsum([0] + [len(d.final) for d in dfas])
    if offsets[-1] > MAX_STATES:
        raise GrammarError(f"the grammar's automata have {offsets[-1]} states (limit {MAX_STATES}); "
                           "large bounded repetitions (x ~ 1000) are the usual cause")
    trans = np.full((offsets[-1], 256), -1, np.int32)
    final = np.zeros(offsets[-1], bool)
    rule_of = np.zeros(offsets[-1], np.int32)
    calls: list[tuple[tuple[int, int], ...]] = []
    for r, d in enumerate(dfas):
        o = offsets[r]
        t = np.asarray(d.trans, np.int32).reshape(-1, 256)
        trans[o:o + len(t)] = np.where(t >= 0, t + o, -1)
        final[o:o + len(t)] = d.final
        rule_of[o:o + len(t)] = r
        calls += [tuple((int(offsets[callee]), int(ret + o)) for callee, ret in cs) for cs in d.calls]
    a = Automaton(names, 0, trans, calls, final, rule_of)
    return _trim(a)


# -- rules: inline what is not recursive, loop what recurses at its tail, refuse left recursion ----
def _prepare(g: Grammar) -> tuple[dict[str, Expr], dict[str, Expr]]:
    """(automaton rules, Goto targets), every non-recursive Ref inlined."""
    from .grammar import _refs

    reach, todo = {g.start}, [g.start]
    while todo:
        for r in _refs(g.rules[todo.pop()]) - reach:
            reach.add(r)
            todo.append(r)
    goto_targets = {n for r in reach for n in _gotos(g.rules[r])}
    rules = {n: (g.rules[n] if n in goto_targets else _tail_loop(n, g.rules[n])) for n in reach}
    graph = nx.DiGraph()
    graph.add_nodes_from(rules)
    graph.add_edges_from((n, r) for n, e in rules.items() for r in _refs(e))
    recursive = {n for comp in nx.strongly_connected_components(graph) for n in comp
                 if len(comp) > 1 or graph.has_edge(n, n)} - goto_targets
    keep = recursive | {g.start} | {n for n in reach - goto_targets if _gotos(rules[n])}
    memo: dict[str, Expr] = {}

    def inline(e: Expr) -> Expr:
        if isinstance(e, Ref):
            if e.name in keep:
                return e
            if e.name not in memo:
                memo[e.name] = inline(rules[e.name])
            return memo[e.name]
        if isinstance(e, Seq):
            return Seq(tuple(map(inline, e.items)))
        if isinstance(e, Alt):
            return Alt(tuple(map(inline, e.items)))
        if isinstance(e, Repeat):
            return Repeat(inline(e.item), e.min, e.max)
        return e

    out = {n: inline(rules[n]) for n in keep}
    gotos = {n: inline(rules[n]) for n in goto_targets}
    _check(g, out, gotos)
    return out, gotos


def _gotos(e: Expr) -> set[str]:
    if isinstance(e, Goto):
        return {e.name}
    if isinstance(e, (Seq, Alt)):
        return set().union(*map(_gotos, e.items)) if e.items else set()
    if isinstance(e, Repeat):
        return _gotos(e.item)
    return set()


def _tail_loop(name: str, e: Expr) -> Expr:
    """r: a r | b r | c   ->   r: (a | b)* c, when r refers to itself only at the alternatives' ends."""
    from .grammar import _refs

    alts = e.items if isinstance(e, Alt) else (e,)
    loops, ends = [], []
    for a in alts:
        items = a.items if isinstance(a, Seq) else (a,)
        if items and items[-1] == Ref(name):
            head = items[:-1]
            if any(name in _refs(x) for x in head):
                return e
            loops.append(head[0] if len(head) == 1 else Seq(head))
        elif name in _refs(a):
            return e
        else:
            ends.append(a)
    if not loops or not ends:
        return e
    loop = loops[0] if len(loops) == 1 else Alt(tuple(loops))
    end = ends[0] if len(ends) == 1 else Alt(tuple(ends))
    return Seq((Repeat(loop, 0, None), end))


def _check(g: Grammar, rules: dict[str, Expr], gotos: dict[str, Expr] | None = None) -> None:
    """Every rule can finish (is productive), and no rule can call itself before reading a byte."""
    both = {**(gotos or {}), **rules}
    nullable: dict[str, bool] = {n: False for n in both}
    productive: dict[str, bool] = {n: False for n in both}
    changed = True
    while changed:
        changed = False
        for n, e in both.items():
            for table, empty in ((nullable, True), (productive, False)):
                if not table[n] and _derives(e, table, empty):
                    table[n] = changed = True
    for n in sorted(rules):
        if not productive[n]:
            raise GrammarError(f"rule '{n}' can never finish: every alternative refers to a rule that never ends",
                               *g._where(n))
    first = nx.DiGraph()
    first.add_nodes_from(both)
    for n, e in both.items():
        first.add_edges_from((n, r) for r in _first_refs(e, nullable))
    if nx.is_directed_acyclic_graph(first):
        return
    for cycle in nx.simple_cycles(first):
        raise GrammarError(f"left recursion: rule '{cycle[0]}' can refer to itself before reading any character "
                           f"({' -> '.join(cycle + [cycle[0]])}); rewrite it with repetition, e.g. `x: y (\",\" y)*`",
                           *g._where(cycle[0]))


def _derives(e: Expr, rules: dict[str, bool], empty: bool) -> bool:
    """Whether `e` can derive the empty string (`empty`), or any string at all, given the rules' answers."""
    if isinstance(e, Chars):
        return not empty and bool(e.ranges)
    if isinstance(e, (Ref, Goto)):
        return rules[e.name]
    if isinstance(e, Seq):
        return all(_derives(x, rules, empty) for x in e.items)
    if isinstance(e, Alt):
        return any(_derives(x, rules, empty) for x in e.items)
    return e.min == 0 or _derives(e.item, rules, empty)


def _first_refs(e: Expr, nullable: dict[str, bool]) -> set[str]:
    """Rules that `e` may call before it reads a byte."""
    if isinstance(e, (Ref, Goto)):
        return {e.name}
    if isinstance(e, Seq):
        out: set[str] = set()
        for x in e.items:
            out |= _first_refs(x, nullable)
            if not _derives(x, nullable, True):
                break
        return out
    if isinstance(e, Alt):
        return set().union(*(_first_refs(x, nullable) for x in e.items)) if e.items else set()
    if isinstance(e, Repeat):
        return _first_refs(e.item, nullable)
    return set()


# -- Thompson NFA over bytes -----------------------------------------------------------------------
class _NFA:
    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int, int]]] = []  # (lo byte, hi byte, to)
        self.eps: list[list[int]] = []
        self.calls: list[list[tuple[str, int]]] = []

    def new(self) -> int:
        self.edges.append([])
        self.eps.append([])
        self.calls.append([])
        if len(self.edges) > MAX_STATES:
            raise GrammarError(f"a rule's automaton has more than {MAX_STATES} states; large bounded repetitions are the usual cause")
        return len(self.edges) - 1

    @classmethod
    def of(cls, e: Expr, gotos: dict[str, Expr] | None = None) -> "_NFA":
        n = cls()
        n.gotos, n.fragments = gotos or {}, {}
        n.start = n.new()
        n.end = n.new()
        n.eps[n.add(e, n.start)].append(n.end)
        return n

    def add(self, e: Expr, s: int) -> int:
        """Add `e` starting at state s; return its end state."""
        if isinstance(e, Chars):
            end = self.new()
            for seq in utf8_sequences(e.ranges):
                cur = s
                for i, (lo, hi) in enumerate(seq):
                    nxt = end if i == len(seq) - 1 else self.new()
                    self.edges[cur].append((lo, hi, nxt))
                    cur = nxt
            return end
        if isinstance(e, Seq):
            for x in e.items:
                s = self.add(x, s)
            return s
        if isinstance(e, Alt):
            end = self.new()
            for x in e.items:
                a = self.new()
                self.eps[s].append(a)
                self.eps[self.add(x, a)].append(end)
            return end
        if isinstance(e, Ref):
            end = self.new()
            self.calls[s].append((e.name, end))
            return end
        if isinstance(e, Goto):  # the target's fragment, built once, ends where this rule ends
            if e.name not in self.fragments:
                f = self.fragments[e.name] = self.new()
                self.eps[self.add(self.gotos[e.name], f)].append(self.end)
            self.eps[s].append(self.fragments[e.name])
            return self.new()  # nothing follows a Goto: a state nothing reaches
        for _ in range(e.min):
            s = self.add(e.item, s)
        if e.max is None:
            loop = self.new()
            self.eps[s].append(loop)
            self.eps[self.add(e.item, loop)].append(loop)
            return loop
        end = self.new()
        for _ in range(e.max - e.min):
            self.eps[s].append(end)
            s = self.add(e.item, s)
        self.eps[s].append(end)
        return end


@functools.lru_cache(maxsize=4096)
def utf8_sequences(ranges: tuple[tuple[int, int], ...]) -> list[tuple[tuple[int, int], ...]]:
    """Code point ranges -> byte-range sequences matching exactly their UTF-8 encodings (surrogates
    excluded), by splitting each range until every byte position is a plain range."""
    out: list[tuple[tuple[int, int], ...]] = []

    def split(lo: int, hi: int) -> None:
        for a, b in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)):
            lo2, hi2 = max(lo, a), min(hi, b)
            if lo2 <= hi2:
                same_length(lo2, hi2)

    def same_length(lo: int, hi: int) -> None:
        n = len(chr(lo).encode())
        for i in range(1, n):
            m = (1 << (6 * i)) - 1
            if lo & ~m != hi & ~m:
                if lo & m:
                    same_length(lo, lo | m)
                    same_length((lo | m) + 1, hi)
                    return
                if hi & m != m:
                    same_length(lo, (hi & ~m) - 1)
                    same_length(hi & ~m, hi)
                    return
        out.append(tuple(zip(chr(lo).encode(), chr(hi).encode())))

    for lo, hi in ranges:
        split(lo, hi)
    return out


# -- subset construction ---------------------------------------------------------------------------
@dataclass
class _DFA:
    trans: list[int] = field(default_factory=list)  # flat [states * 256]
    final: list[bool] = field(default_factory=list)
    calls: list[list[tuple[int, int]]] = field(default_factory=list)  # (callee rule id, target)


def _determinize(n: _NFA, rule_ids: dict[str, int]) -> _DFA:
    def closure(states: set[int]) -> frozenset[int]:
        todo, seen = list(states), set(states)
        while todo:
            for t in n.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    d = _DFA()
    index: dict[frozenset[int], int] = {}
    todo: list[frozenset[int]] = []

    def state(s: frozenset[int]) -> int:
        if s not in index:
            index[s] = len(d.final)
            d.final.append(n.end in s)
            d.trans.extend([-1] * 256)
            d.calls.append([])
            todo.append(s)
            if len(d.final) > MAX_STATES:
                raise GrammarError(f"a rule's automaton has more than {MAX_STATES} states")
        return index[s]

    state(closure({n.start}))
    work = 0
    while todo:
        s = todo.pop()
        work += len(s)
        if work > MAX_WORK:
            raise GrammarError(f"determinizing a rule took more than {MAX_WORK} steps (nested bounded repetitions "
                               "such as ((a{1,50}){1,50}){1,10} are the usual cause); simplify the repetition")
        i = index[s]
        edges = [e for q in s for e in n.edges[q]]
        cuts = sorted({lo for lo, _, _ in edges} | {hi + 1 for _, hi, _ in edges})
        for lo, nxt in zip(cuts, cuts[1:]):
            targets = {t for a, b, t in edges if a <= lo and nxt - 1 <= b}
            if targets:
                j = state(closure(targets))
                d.trans[i * 256 + lo:i * 256 + nxt] = [j] * (nxt - lo)
        by_rule: dict[str, set[int]] = {}
        for q in s:
            for rule, t in n.calls[q]:
                by_rule.setdefault(rule, set()).add(t)
        d.calls[i] = [(rule_ids[r], state(closure(ts))) for r, ts in sorted(by_rule.items())]
    return d


def _trim(a: Automaton) -> Automaton:
    """Drop positions that cannot reach their rule's end (dead states), renumbering the rest."""
    rev: list[list[int]] = [[] for _ in range(a.n_positions)]
    for p in range(a.n_positions):
        for t in set(a.trans[p][a.trans[p] >= 0].tolist()):
            rev[t].append(p)
        for _, ret in a.calls[p]:
            rev[ret].append(p)
    live = a.final.copy()
    todo = list(np.flatnonzero(live))
    while todo:
        for p in rev[todo.pop()]:
            if not live[p]:
                live[p] = True
                todo.append(p)
    if not live[a.start]:
        raise GrammarError(f"the start rule '{a.rules[0]}' can never finish")
    new = np.cumsum(live) - 1
    trans = a.trans[live]
    trans = np.where((trans >= 0) & live[np.maximum(trans, 0)], new[np.maximum(trans, 0)], -1).astype(np.int32)
    calls = [tuple((int(new[c]), int(new[r])) for c, r in a.calls[p] if live[r]) for p in np.flatnonzero(live)]
    return Automaton(a.rules, int(new[a.start]), trans, calls, a.final[live], a.rule_of[live])



