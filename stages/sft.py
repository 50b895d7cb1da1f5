"""Supervised fine-tuning of a LoRA adapter on judged agent traces (TRL SFTTrainer + peft).

    hopsmith sft --traces runs/ladder/kept.jsonl --out runs/ladder/sft [--preset seed000|seed002]

Loss is on assistant tokens only: every trace is rendered with the model's training template
(`hopsmith.backends.templates`: TRL's marked variant for Qwen2.5/Qwen3, our ChatML-with-tools template for
ChatML models like SmolLM2, the model's own for Llama 3.2 with the assistant's tokens found prefix by
prefix), tokenised here, and handed to TRL with its labels already masked. Tool results, the system prompt
and the question never contribute to the loss. Traces longer than `max_length` are left out, not cut, and
the count is printed.

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

from hopsmith.training import SFTConfig, train_sft

__all__ = ["SFTConfig", "run"]


def run(cfg: SFTConfig, root: str | Path, *, model=None, tokenizer=None, max_seconds: float | None = None) -> dict:
    """Train (or resume) the adapter into `root`; the summary is also `root/training.json`."""
    return train_sft(cfg, root, model=model, tokenizer=tokenizer, max_seconds=max_seconds)
