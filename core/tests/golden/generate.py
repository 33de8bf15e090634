#!/usr/bin/env python3
"""Writes the expected side of the golden corpus with the real libjq.

The reference engine is the PyPI `jq` package, the binding Ocean itself uses:
    pip install jq==1.13.0 && python3 core/tests/golden/generate.py
Each expression case gets {"value": first output} | {"empty": true} | {"error": true}.
Each mapping case (mappings/*/) gets expected.jsonl from mapping.py, Ocean's algorithm.
"""
import json
import os
import sys

import jq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from mapping import rewrite_single_quotes  # noqa: E402


def first(expression, data):
    try:
        program = jq.compile(rewrite_single_quotes(expression))
    except ValueError:
        return {"error": True}
    try:
        outputs = program.input_value(data)
        return {"value": outputs.first()}
    except StopIteration:
        return {"empty": True}
    except ValueError:
        return {"error": True}


def expressions():
    with open(os.path.join(HERE, "expressions.json")) as f:
        cases = json.load(f)
    expected = [dict(case, expected=first(case["expr"], case["input"])) for case in cases]
    with open(os.path.join(HERE, "expressions.expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(expected)} expression cases")


def mappings():
    import mapping

    root = os.path.join(HERE, "mappings")
    for name in sorted(os.listdir(root)):
        case = os.path.join(root, name)
        count = mapping.write_expected(case)
        print(f"mapping {name}: {count} entities")


if __name__ == "__main__":
    expressions()
    if os.path.isdir(os.path.join(HERE, "mappings")):
        mappings()
