#!/usr/bin/env python3
"""The official `openai` Python client against `gemma-embed serve`, unchanged but for base_url.

    python3 tools/openai_client_check.py --base-url http://127.0.0.1:8080/v1 --api-key KEY \
        --input texts.jsonl --expected expected.jsonl

`--input` holds `{"text": ...}` lines; `--expected` holds their full-width reference embeddings as
`{"embedding": [...]}` lines (tests/server_openai_client.rs writes sentence-transformers' golden
ones). Checks, exiting non-zero when any fails:
- `embeddings.create` with the client's default encoding (base64 when numpy is installed) and
  with `encoding_format="float"` returns the expected embeddings (max abs difference <= --tolerance);
- `dimensions=256` returns the renormalized 256-prefix of the expected embedding (10 x --tolerance);
- `models.list()` names the served model; `usage.prompt_tokens` is positive (and the sum of the
  expected rows' `n_tokens` when they give it); errors come back as the client's typed exceptions
  (422 -> UnprocessableEntityError, 401 -> AuthenticationError).
"""

import argparse
import json
import math
import sys

import openai


def max_abs_diff(a, b):
    if len(a) != len(b):
        return math.inf
    return max(abs(x - y) for x, y in zip(a, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--expected", required=True)
    parser.add_argument("--model", default="google/embeddinggemma-300m")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for line in open(args.input) if line.strip()]
    rows = [json.loads(line) for line in open(args.expected) if line.strip()]
    assert len(texts) == len(rows), "one expected embedding per text"
    expected = [row["embedding"] for row in rows]
    # The reference's token counts, when given, are what `usage` must report.
    expected_tokens = (sum(row["n_tokens"] for row in rows)
                       if all("n_tokens" in row for row in rows) else None)

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    failures = []

    served = [m.id for m in client.models.list()]
    if served != [args.model]:
        failures.append(f"models.list(): {served}")

    for label, kwargs in [("default encoding", {}), ("float", {"encoding_format": "float"})]:
        response = client.embeddings.create(model=args.model, input=texts, **kwargs)
        if len(response.data) != len(texts):
            failures.append(f"{label}: {len(response.data)} embeddings for {len(texts)} texts")
            continue
        failed_before = len(failures)
        for i, (item, want) in enumerate(zip(response.data, expected)):
            diff = max_abs_diff(list(item.embedding), want)
            if item.index != i or diff > args.tolerance:
                failures.append(f"{label}: text {i}: index {item.index}, max diff {diff}")
        tokens = response.usage.prompt_tokens
        wrong_tokens = tokens <= 0 or expected_tokens not in (None, tokens)
        if wrong_tokens or response.model != args.model:
            failures.append(f"{label}: usage {response.usage} (expected {expected_tokens} "
                            f"prompt tokens), model {response.model}")
        if len(failures) == failed_before:
            print(f"{label}: {len(texts)} embeddings match the expected ones ({tokens} tokens)")

    response = client.embeddings.create(model=args.model, input=texts[0], dimensions=256)
    prefix = expected[0][:256]
    norm = math.sqrt(sum(x * x for x in prefix))
    diff = max_abs_diff(list(response.data[0].embedding), [x / norm for x in prefix])
    if diff > 10 * args.tolerance:
        failures.append(f"dimensions=256: max diff {diff}")
    print(f"dimensions=256: max diff {diff:.2e}")

    try:
        client.embeddings.create(model=args.model, input="")
        failures.append("an empty input was accepted")
    except openai.UnprocessableEntityError as e:
        print(f"empty input: {e.status_code} {e.body['message']}")

    wrong_key = openai.OpenAI(base_url=args.base_url, api_key="wrong", max_retries=0)
    try:
        wrong_key.embeddings.create(model=args.model, input="x")
        failures.append("a wrong API key was accepted")
    except openai.AuthenticationError as e:
        print(f"wrong key: {e.status_code}")

    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
