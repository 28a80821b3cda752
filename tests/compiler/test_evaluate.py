"""compiler.evaluate's perplexity against values worked out by hand."""
from __future__ import annotations

import numpy as np

from compiler.evaluate import chunk_nlls, nll, perplexity


def test_uniform_logits_give_the_vocabulary_size():
    chunks = np.arange(12).reshape(3, 4) % 5
    assert np.allclose(chunk_nlls(lambda ids: np.zeros((1, 4, 5), np.float32), chunks), np.log(5))
    assert np.isclose(perplexity(lambda ids: np.zeros((1, 4, 5), np.float32), chunks), 5.0)


def test_per_chunk_nll_is_each_chunks_mean_and_perplexity_their_geometric_mean():
    rng = np.random.default_rng(0)
    chunks = rng.integers(0, 7, (4, 6))
    table = {row.tobytes(): rng.standard_normal((1, 6, 7)).astype(np.float32) for row in chunks}
    logits_of = lambda ids: table[ids[0].tobytes()]  # noqa: E731
    per = chunk_nlls(logits_of, chunks)
    for row, v in zip(chunks, per):
        lg = table[row.tobytes()][0, :-1].astype(np.float64)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        assert np.isclose(v, -np.log(p[np.arange(5), row[1:]]).mean())
        assert np.isclose(v, nll(table[row.tobytes()], row[None])[0] / 5)
    assert np.isclose(perplexity(logits_of, chunks), np.exp(per.mean()))
