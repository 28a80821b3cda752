"""Constrained generation with SmolLM2-135M: 16 sampled outputs (one batch of 16 rows; it was 50,
which took over 3 minutes on two cores), every one of them JSON that `json.loads` accepts and that validates against the schema."""
from __future__ import annotations

import json

import numpy as np
import pytest

import compiler

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test dependency: pip install -e '.[test]'")

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,11}$"},
        "age": {"type": "integer"},
        "city": {"enum": ["Paris", "London", "Tokyo", "Lima"]},
        "hobbies": {"type": "array", "items": {"enum": ["tea", "chess", "music", "hiking"]}, "maxItems": 3},
        "student": {"type": "boolean"},
    },
    "required": ["name", "age", "city"],
}


def test_16_sampled_outputs_are_valid_json(smollm2):
    model, tok = smollm2
    chat = [{"role": "user", "content": "Describe a fictional person as a JSON object with a name, age, city and hobbies."}]
    prompt = tok.encode(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    c = compiler.compile(model, target="cpu")
    out = c.generate([list(prompt)] * 16, max_new_tokens=96, do_sample=True, temperature=1.0, seed=0,
                     json_schema=SCHEMA, tokenizer=tok)
    stop = tok.eos_token_id
    docs = []
    for row in np.asarray(out)[:, len(prompt):]:
        assert stop in row, f"row did not finish in 96 tokens: {tok.decode(row)!r}"
        text = tok.decode(row[:list(row).index(stop)])
        doc = json.loads(text)
        jsonschema.validate(doc, SCHEMA)
        docs.append(text)
    assert len(set(docs)) > 4  # sampled: the rows differ
