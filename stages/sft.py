"""Supervised fine-tuning of a LoRA adapter on judged agent traces (TRL SFTTrainer + peft).

    hopsmith sft --traces runs/ladder/kept.jsonl --out runs/ladder/sft
    hopsmith sft --traces runs/ladder/kept.jsonl --preset seed002 --out runs/ladder/sft-enterprise

Loss is on assistant tokens only: every trace is rendered with the model's training template
(`hopsmith.backends.templates`: TRL's marked variant for Qwen2.5/Qwen3, our ChatML-with-tools template for
ChatML models like SmolLM2, the model's own for Llama 3.2 with the assistant's tokens found prefix by
prefix), tokenised here, and handed to TRL with its labels already masked. Tool results, the system prompt
and the question never contribute to the loss. Traces longer than `max_length` are left out, not cut, and
the count is printed.

Collation (`collation="per_trace"`, the default): every forward pass is one whole trace, the batch of
`batch_size` traces made by gradient accumulation (same batches, same loss normalisation), so no pad token
is computed and no attention mask is built (SDPA's causal kernel runs), and the loss projects onto the
vocabulary only the positions that predict an assistant token (`logits_to_keep`): tool results and
prompts cost their forward and backward pass and nothing more. `collation="padded"` is TRL's padded
batches with every position scored, the path before; benchmarks/sft_speed.py compares the two on the
same traces. (TRL's `padding_free=True` packs a batch into one row, but on CPU SDPA then needs a dense
block mask over the whole row: measured slower than padded batches here.)

Writes into `root`: the adapter (`adapter_model.safetensors`, `adapter_config.json`, the tokenizer with the
template it was trained with), `training.json` (config, trained question ids, counts), `loss.json` (the
loss curve) and `checkpoints/` (a rerun resumes from the last one).

Presets: seed000 = LoRA r=16 on the attention projections, 3 epochs, cosine (the LoRA multi-hop recipe);
seed002 = r=32 alpha=64 dropout 0.05 all-linear, lr 2e-4, cosine, 3% warmup, NEFTune alpha 5, 2 epochs,
QLoRA NF4 when CUDA is present (the enterprise recipe). The training itself is `hopsmith.training`, which
rejection fine-tuning shares.
"""
from __future__ import annotations

from pathlib import Path

from hopsmith.runlock import locked
from hopsmith.training import SFTConfig, train_sft

__all__ = ["SFTConfig", "run"]


@locked
def run(cfg: SFTConfig, root: str | Path, *, model=None, tokenizer=None, max_seconds: float | None = None) -> dict:
    """Train (or resume) the adapter into `root`; the summary is also `root/training.json`."""
    return train_sft(cfg, root, model=model, tokenizer=tokenizer, max_seconds=max_seconds)
