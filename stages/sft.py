"""Supervised fine-tuning of a LoRA adapter on judged agent traces (TRL SFTTrainer + peft).

    hopsmith sft --traces runs/ladder/kept.jsonl --out runs/ladder/sft [--preset seed000|seed002]

Loss is on assistant tokens only: every trace is rendered with the chat template that inference uses
(hopsmith/templates/chatml_tools.jinja for ChatML models, whose `{% generation %}` markers give the
assistant mask), tokenised here, and handed to TRL with its labels already masked. Tool results, the
system prompt and the question never contribute to the loss.

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

Presets: seed000 = LoRA r=16 on the attention projections, 3 epochs, cosine (seed 000's recipe);
seed002 = r=32 alpha=64 dropout 0.05 all-linear, lr 2e-4, cosine, 3% warmup, NEFTune alpha 5, 2 epochs,
QLoRA NF4 when CUDA is present (seed 002's recipe).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from hopsmith.io import read_jsonl, write_json

PRESETS = {
    "seed000": dict(lora_r=16, lora_alpha=32, lora_dropout=0.05, target_modules="attention", epochs=3.0,
                    learning_rate=2e-4, lr_scheduler="cosine", warmup_ratio=0.0, neftune_alpha=None),
    "seed002": dict(lora_r=32, lora_alpha=64, lora_dropout=0.05, target_modules="all-linear", epochs=2.0,
                    learning_rate=2e-4, lr_scheduler="cosine", warmup_ratio=0.03, neftune_alpha=5.0),
}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class SFTConfig:
    traces: str = "kept.jsonl"  # JSONL of traces (rows with `messages` and `tools`)
    model: str = "embedded"
    preset: str = "seed000"  # seed000 | seed002 | none; explicit keys below override the preset
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    target_modules: str | None = None  # attention | all-linear | comma-separated module names
    epochs: float | None = None
    learning_rate: float | None = None
    lr_scheduler: str | None = None
    warmup_ratio: float | None = None
    neftune_alpha: float | None = None
    qlora: str = "auto"  # auto: NF4 when CUDA is present and the preset is seed002; on | off
    batch_size: int = 2
    grad_accum: int = 1
    max_length: int = 2048
    max_steps: int = -1
    save_steps: int = 25
    seed: int = 0
    # Continue this LoRA adapter instead of starting a new one (its rank and targets are kept; the lora_*
    # keys are then unused). Rejection fine-tuning uses it to train the sampled policy further.
    init_adapter: str | None = None
    collation: str = "per_trace"  # per_trace (one trace a forward, logits on assistant positions) | padded

    def resolved(self) -> "SFTConfig":
        """The preset's values for every key left unset."""
        if self.preset not in (*PRESETS, "none"):
            from hopsmith.config import ConfigError

            raise ConfigError(f"unknown SFT preset {self.preset!r}; known: {', '.join(PRESETS)}, none")
        if self.collation not in ("per_trace", "padded"):
            from hopsmith.config import ConfigError

            raise ConfigError(f"unknown SFT collation {self.collation!r}; known: per_trace, padded")
        base = PRESETS.get(self.preset, PRESETS["seed000"])
        return replace(self, **{k: v for k, v in base.items() if getattr(self, k) is None})


def target_modules(spec: str):
    if spec == "attention":
        return ATTENTION
    if spec == "all-linear":
        return "all-linear"
    return [s.strip() for s in spec.split(",") if s.strip()]


def tokenize_trace(trace: dict, tokenizer, chat_template: str, max_length: int) -> dict:
    """input_ids and labels (-100 outside assistant turns) for one trace."""
    out = tokenizer.apply_chat_template(
        trace["messages"], tools=trace.get("tools"), chat_template=chat_template, tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True,
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(mask):
        raise ValueError(f"trace {trace.get('id')}: no assistant tokens (the chat template has no generation markers?)")
    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)],
            "attention_mask": [1] * len(ids)}


def trace_lengths(traces: list[dict], model: str = "embedded") -> list[int]:
    """Tokens of each trace as SFT renders it (the model's tokenizer and chat template), so a caller can
    pick traces that fit `max_length` before sampling instead of losing them here."""
    from transformers import AutoTokenizer

    from hopsmith.backends.hf import pick_chat_template
    from hopsmith.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    template = pick_chat_template(tokenizer)
    return [len(tokenize_trace(t, tokenizer, template, 0)["input_ids"]) for t in traces]


def assistant_only_trainer():
    """TRL's SFTTrainer with a loss that computes logits only at positions whose next token is trained.

    TRL's own loss scores every position on CPU (its compact path needs Triton): on a 49k vocabulary that
    is the LM head and the log-softmax over every tool-result and prompt token. Each forward is one trace,
    so the positions to keep are one index tensor (`logits_to_keep`); normalisation by
    `num_items_in_batch` (every trace of the accumulated batch) is TRL's, so gradient accumulation and
    logged losses mean what they meant."""
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    class AssistantOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            labels = inputs.pop("labels")
            if labels.shape[0] != 1:
                raise ValueError("assistant-only logits take one trace a forward (collation='per_trace')")
            target = labels[0, 1:]
            keep = (target != -100).nonzero().flatten()
            inputs["use_cache"] = False
            outputs = model(**inputs, logits_to_keep=keep)
            logits, target = outputs.logits[0], target[keep]
            loss = F.cross_entropy(logits.float(), target, reduction="sum")
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else max(1, target.numel()))
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            with torch.no_grad():
                accuracy = (logits.argmax(-1) == target).float().mean().item() if target.numel() else 0.0
            self._metrics[mode]["mean_token_accuracy"].append(accuracy)
            if mode == "train":
                self._total_train_tokens += int(inputs["input_ids"].shape[1])
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return AssistantOnlySFTTrainer


def load_model_for_training(cfg: SFTConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hopsmith.backends.hf import pick_chat_template
    from hopsmith.models import resolve_model

    path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    cuda = torch.cuda.is_available()
    use_qlora = cfg.qlora == "on" or (cfg.qlora == "auto" and cuda and cfg.preset == "seed002")
    kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if use_qlora:
        if not cuda:
            raise RuntimeError("qlora=on needs a CUDA GPU (bitsandbytes NF4)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if use_qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer, pick_chat_template(tokenizer), use_qlora


def run(cfg: SFTConfig, root: str | Path, *, model=None, tokenizer=None, max_seconds: float | None = None) -> dict:
    """Train (or resume) the adapter; returns a summary also written to `root/training.json`.

    `max_seconds` (the budget guard's time left) stops training at the first step past it, saves a
    checkpoint and the adapter, and marks the summary `stopped_early`; a rerun resumes from there."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from hopsmith.backends.hf import pick_chat_template

    cfg = cfg.resolved()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    traces_path = Path(cfg.traces)
    if not traces_path.exists():
        raise FileNotFoundError(f"no traces file at {traces_path}")
    traces = read_jsonl(traces_path)
    if not traces:
        raise ValueError(f"{traces_path} holds no traces: nothing to train on")
    use_qlora = False
    if model is None:
        model, tokenizer, template, use_qlora = load_model_for_training(cfg)
    else:
        template = pick_chat_template(tokenizer)
    if cfg.init_adapter:
        from peft import PeftModel

        from hopsmith.backends.hf import check_adapter

        check_adapter(cfg.init_adapter)
        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenized = [tokenize_trace(t, tokenizer, template, cfg.max_length) for t in traces]
    # A trace cut short loses its conclusion (the final answer), so long traces are left out, not cut.
    keep = [i for i, r in enumerate(tokenized) if len(r["input_ids"]) <= cfg.max_length]
    too_long = len(tokenized) - len(keep)
    if not keep:
        raise ValueError(f"every trace in {traces_path} is longer than max_length={cfg.max_length} tokens")
    traces, rows = [traces[i] for i in keep], [tokenized[i] for i in keep]
    dataset = Dataset.from_list(rows)

    losses: list[dict] = []

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append({"step": state.global_step, "epoch": state.epoch, "loss": float(logs["loss"])})

    stopped = []

    class Deadline(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                stopped.append(state.global_step)
                control.should_save = True
                control.should_training_stop = True

    steps_per_epoch = math.ceil(len(rows) / (cfg.batch_size * cfg.grad_accum))
    cuda = torch.cuda.is_available()
    # per_trace: one trace a forward, the same batches by accumulation (the sampler's order does not
    # depend on the micro-batch size, so optimizer step k sees the traces it sees with padded batches).
    per_trace = cfg.collation == "per_trace"
    micro, accumulate = (1, cfg.batch_size * cfg.grad_accum) if per_trace else (cfg.batch_size, cfg.grad_accum)
    args = TRLConfig(
        output_dir=str(root / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulate,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio of total steps
        neftune_noise_alpha=cfg.neftune_alpha,
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=cfg.seed,
        # bf16 on CPU is ~17x slower here; checkpointing costs more than it saves on small models.
        bf16=cuda,
        fp16=False,
        activation_checkpointing=False,
        max_length=None,  # already cut in tokenize_trace
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=target_modules(cfg.target_modules), task_type="CAUSAL_LM")
    trainer_cls = assistant_only_trainer() if per_trace else SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=None if cfg.init_adapter else peft_config, callbacks=[LossLog(), Deadline()])
    # With tqdm off the Trainer prints every log dict; loss.json keeps the curve instead.
    trainer.remove_callback(PrinterCallback)
    checkpoints = sorted((root / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    started, started_cpu = time.perf_counter(), time.process_time()
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    trainer.model.save_pretrained(root)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(root)
    # An adapter continued from another has seen that one's questions too (the leakage guard reads this).
    question_ids = sorted({t.get("question_id") for t in traces if t.get("question_id")}
                          | (trained_question_ids(cfg.init_adapter) if cfg.init_adapter else set()))
    summary = {
        "config": asdict(cfg),
        "qlora": use_qlora,
        "traces": len(traces),
        "too_long_dropped": too_long,
        "tokens": sum(len(r["input_ids"]) for r in rows),
        "assistant_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in rows),
        "steps": trainer.state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "train_loss": float(result.training_loss),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # process CPU time of training: on a shared machine, the work done
        "stopped_early": bool(stopped),
        "trained_question_ids": question_ids,
        "sources": _count(t.get("source", "?").split(":")[0] for t in traces),
    }
    write_json(root / "training.json", summary)
    write_json(root / "loss.json", losses)
    return summary


def trained_question_ids(adapter_dir: str | Path) -> set[str]:
    """The question ids an adapter was trained on (empty when it carries no record)."""
    path = Path(adapter_dir) / "training.json"
    if not path.exists():
        return set()
    return set(json.loads(path.read_text()).get("trained_question_ids", []))


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


SFT_FIELDS = [f.name for f in fields(SFTConfig)]
