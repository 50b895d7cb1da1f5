"""Supervised fine-tuning of a LoRA adapter on judged agent traces (TRL SFTTrainer + peft).

    hopsmith sft --traces runs/ladder/kept.jsonl --out runs/ladder/sft [--preset seed000|seed002]

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
from hopsmith.leakage import trained_question_ids as _trained_question_ids
from hopsmith.leakage import training_record
from hopsmith.runlock import locked

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
    max_length: int = 4096  # the pipeline's and the cloud ladder's; longer traces are left out (and said so)
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


def tokenize_trace(trace: dict, tokenizer, chat_template: str, max_length: int | None = None) -> dict:
    """input_ids and labels (-100 on every token the assistant did not write) for one trace, rendered with
    `chat_template` (the training template of `hopsmith.backends.templates.chat_templates`). Not cut to
    max_length: `fit_traces` leaves long traces out instead."""
    from hopsmith.backends.templates import tokenize_conversation

    return tokenize_conversation(tokenizer, trace["messages"], trace.get("tools"), chat_template)


def fit_traces(traces: list[dict], tokenizer, chat_template: str, max_length: int, *, what: str = "traces",
               log=None) -> tuple[list[dict], list[dict], dict]:
    """Tokenise every trace; leave out (never cut: a cut trace loses its final answer) those longer than
    max_length and those the chat template cannot render. Returns (kept traces, their rows, a report) and
    prints one line per kind of drop, with the count and the fix."""
    import sys

    import jinja2

    from hopsmith.backends.templates import TemplateError

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    kept, rows, too_long, refused = [], [], [], {}
    for t in traces:
        try:
            row = tokenize_trace(t, tokenizer, chat_template)
        except (TemplateError, jinja2.TemplateError) as exc:  # e.g. Llama 3.2's "only supports single tool-calls"
            refused.setdefault(f"{type(exc).__name__}: {exc}"[:200], []).append(t.get("id"))
            continue
        if len(row["input_ids"]) > max_length:
            too_long.append(len(row["input_ids"]))
            continue
        kept.append(t)
        rows.append(row)
    if too_long:
        log(f"left out {len(too_long)} of {len(traces)} {what} longer than max_length={max_length} tokens (longest "
            f"{max(too_long)}); raise --max-length to train on them")
    for reason, ids in refused.items():
        log(f"left out {len(ids)} of {len(traces)} {what} the chat template cannot render ({reason}; e.g. {ids[0]})")
    report = {"too_long": len(too_long), "longest_dropped": max(too_long, default=None),
              "template_refused": sum(len(v) for v in refused.values()), "refused_reasons": sorted(refused),
              "tokens": sum(len(r["input_ids"]) for r in rows)}
    return kept, rows, report


def trace_lengths(traces: list[dict], model: str = "embedded") -> list[int | float]:
    """Tokens of each trace as SFT renders it (the model's tokenizer and training template), so a caller can
    pick traces that fit `max_length` before sampling instead of losing them here. A trace the template
    cannot render counts as infinitely long."""
    import jinja2

    from hopsmith.backends.templates import TemplateError, chat_templates, load_tokenizer
    from hopsmith.models import resolve_model

    tokenizer = load_tokenizer(resolve_model(model))
    template = chat_templates(tokenizer).training
    lengths: list[int | float] = []
    for t in traces:
        try:
            lengths.append(len(tokenize_trace(t, tokenizer, template)["input_ids"]))
        except (TemplateError, jinja2.TemplateError):
            lengths.append(float("inf"))
    return lengths


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
    """(model, tokenizer, its ChatTemplates, whether QLoRA is on). The model loads on the CPU (or 4-bit on
    the GPU); the Trainer moves it to the device it trains on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hopsmith.backends.templates import chat_templates
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
    return model, tokenizer, chat_templates(tokenizer), use_qlora


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints a resume can use, oldest first: a process killed while saving leaves a folder without its
    trainer state or weights, which the Trainer refuses; the one before it is taken instead."""
    def complete(p: Path) -> bool:
        return (p / "trainer_state.json").exists() and any(
            (p / name).exists() for name in ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin"))

    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


RUN_FILE = "sft_run.json"
# Where the traces file lies and how often to checkpoint change nothing; a longer run (more steps or epochs)
# continues the same one.
_NOT_IDENTITY = ("traces", "save_steps", "max_steps", "epochs")


def run_identity(cfg: SFTConfig, traces_path: Path) -> dict:
    """What makes two SFT runs the same run: the resolved config and the traces' bytes."""
    import hashlib

    return {**{k: v for k, v in asdict(cfg).items() if k not in _NOT_IDENTITY},
            "traces_sha256": hashlib.sha256(traces_path.read_bytes()).hexdigest()}


def check_same_run(root: Path, identity: dict) -> None:
    """A rerun into `root` resumes only the run that wrote it: another config or other traces would resume
    its checkpoint (or die on another LoRA shape) and overwrite its trained question ids."""
    from hopsmith.config import ConfigError

    path = root / RUN_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    diff = [k for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
    if diff:
        detail = ", ".join("traces: other content" if k == "traces_sha256" else f"{k}: {saved.get(k)!r} -> {identity.get(k)!r}"
                           for k in diff[:4])
        raise ConfigError(f"{root} holds an SFT run of another configuration ({detail}); give another --out to train "
                          "this one (the run there is kept)")


@locked
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

    from hopsmith.backends.templates import chat_templates, check_prompts_are_prefixes
    from hopsmith.config import ConfigError

    cfg = cfg.resolved()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    traces_path = Path(cfg.traces)
    if not traces_path.exists():
        raise FileNotFoundError(f"no traces file at {traces_path}")
    identity = run_identity(cfg, traces_path)
    check_same_run(root, identity)
    traces = read_jsonl(traces_path)
    if not traces:
        raise ConfigError(f"{traces_path} holds no traces: nothing to train on")
    use_qlora = False
    if model is None:
        model, tokenizer, templates, use_qlora = load_model_for_training(cfg)
    else:
        templates = chat_templates(tokenizer)
    template = templates.training
    if cfg.init_adapter:
        from peft import PeftModel

        from hopsmith.backends.hf import check_adapter

        check_adapter(cfg.init_adapter)
        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    given = len(traces)
    traces, rows, dropped = fit_traces(traces, tokenizer, template, cfg.max_length)
    if not rows:
        raise ConfigError(f"none of the {given} traces in {traces_path} can train: {dropped['too_long']} are longer "
                          f"than max_length={cfg.max_length} tokens, {dropped['template_refused']} refused by the chat "
                          "template; raise --max-length")
    # Inference after training renders with the training template: prove on one trace that every prompt the
    # agent will see is a prefix of what was trained on (raises TemplateError, a one-line CLI error).
    check_prompts_are_prefixes(tokenizer, traces[0]["messages"], traces[0].get("tools"), templates)
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
    checkpoints = complete_checkpoints(root / "checkpoints")
    write_json(root / RUN_FILE, identity)  # written once training really starts: a failed load blocks no rerun
    started, started_cpu = time.perf_counter(), time.process_time()
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    trainer.model.save_pretrained(root)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(root)
    # What the leakage guard reads: ids, answers and question texts trained on (and those of a continued adapter).
    trained = training_record(traces, base_adapter=cfg.init_adapter)
    summary = {
        "config": asdict(cfg),
        "qlora": use_qlora,
        "traces": len(traces),
        "traces_given": given,
        "too_long_dropped": dropped["too_long"],
        "template_refused": dropped["template_refused"],
        "chat_template": templates.source,
        "tokens": sum(len(r["input_ids"]) for r in rows),
        "assistant_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in rows),
        "steps": trainer.state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "train_loss": float(result.training_loss),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # process CPU time of training: on a shared machine, the work done
        "stopped_early": bool(stopped),
        **trained,
        "sources": _count(t.get("source", "?").split(":")[0] for t in traces),
    }
    write_json(root / "training.json", summary)
    write_json(root / "loss.json", losses)
    return summary


def trained_question_ids(adapter_dir: str | Path) -> set[str]:
    """The question ids an adapter was trained on (empty when it carries no record)."""
    return _trained_question_ids(adapter_dir)


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


SFT_FIELDS = [f.name for f in fields(SFTConfig)]
