"""What seed 000's recipe would cost in the cloud, with the one input this machine can measure.

    python benchmarks/cost_estimate.py [--data musique]

Builds full-preset synthetic traces (top-5 whole paragraphs, as the cloud recipe trains on) for the
bundled train split, counts their tokens with the embedded model's tokenizer, puts that mean in place of
the `tokens_per_trace` prior and prints the estimate (`hopsmith cost --estimate` uses the prior) and

    seed000 recipe: $X.XX (tokens/trace N)

GPU throughputs stay the priors of hopsmith/cost.py until a cloud run's ledger measures them.
"""
from __future__ import annotations

import argparse
import tempfile

from hopsmith.cost import estimate_recipe, format_estimate
from hopsmith.io import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="musique")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from hopsmith.backends.templates import chat_templates
    from hopsmith.models import resolve_model
    from hopsmith.config import update
    from stages import traces

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded"))
    template = chat_templates(tok).training  # what SFT renders and trains on
    with tempfile.TemporaryDirectory() as d:
        traces.run(update(traces.TracesConfig(), data=args.data, split="train", top_k=5, max_chars=None), d)
        rows = read_jsonl(f"{d}/traces/shard-0.jsonl")
    sizes = [len(tok(tok.apply_chat_template(r["messages"], tools=r.get("tools"), chat_template=template, tokenize=False),
                     add_special_tokens=False)["input_ids"]) for r in rows]
    mean = sum(sizes) / len(sizes)
    est = estimate_recipe(priors={"tokens_per_trace": mean})
    print(format_estimate(est))
    print(f"seed000 recipe: ${est['total_usd']:.2f} (tokens/trace {mean:.0f}, measured on {len(rows)} {args.data} traces)")


if __name__ == "__main__":
    main()
