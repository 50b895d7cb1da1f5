"""Training helpers every training stage shares: LoRA SFT on traces, the traces that fit, the policy to
continue. The SFT stage (`hopsmith sft`), rejection fine-tuning, SimPO and GRPO all train through here.

    summary = train_sft(SFTConfig(traces="runs/ladder/train.jsonl"), "runs/ladder/sft")
    kept, rows, report = fit_traces(traces, tokenizer, chat_templates(tokenizer).training, max_length=1536)
    policy, tokenizer = load_policy("embedded", "runs/ladder/sft")

torch, transformers, peft and TRL are imported inside the functions that train, so `hopsmith --help` and the
remote-only paths never load them.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import jinja2

from .backends import hf
from .backends.hf import check_adapter
from .backends.templates import (TemplateError, chat_templates, check_prompts_are_prefixes, load_tokenizer,
                                 tokenize_conversation)
from .config import ConfigError
from .io import read_jsonl, write_json
from .leakage import training_record
from .models import resolve_model
from .traces.select import sample_traces

PRESETS = {
    "seed000": dict(lora_r=16, lora_alpha=32, lora_dropout=0.05, target_modules="attention", epochs=3.0,
                    learning_rate=2e-4, lr_scheduler="cosine", warmup_ratio=0.0, neftune_alpha=None),
    "seed002": dict(lora_r=32, lora_alpha=64, lora_dropout=0.05, target_modules="all-linear", epochs=2.0,
                    learning_rate=2e-4, lr_scheduler="cosine", warmup_ratio=0.03, neftune_alpha=5.0),
}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class SFTConfig:
    """`hopsmith sft`: LoRA SFT on judged traces."""

    traces: str = "kept.jsonl"  # JSONL of traces (rows with `messages` and `tools`)
    model: str = "embedded"  # the base model: embedded, a model directory or a hub id
    # seed000 (the LoRA multi-hop recipe) | seed002 (the enterprise recipe) | none; the keys below override it
    preset: str = "seed000"
    lora_r: int | None = None  # LoRA rank
    lora_alpha: int | None = None  # LoRA scaling numerator (alpha / r scales the update)
    lora_dropout: float | None = None  # dropout on the LoRA input
    target_modules: str | None = None  # attention | all-linear | comma-separated module names
    epochs: float | None = None  # passes over the traces
    learning_rate: float | None = None  # peak learning rate
    lr_scheduler: str | None = None  # transformers scheduler name (cosine, linear, ...)
    warmup_ratio: float | None = None  # share of the steps spent warming up
    neftune_alpha: float | None = None  # NEFTune embedding noise; None: off
    qlora: str = "auto"  # auto: NF4 when CUDA is present and the preset is seed002; on | off
    batch_size: int = 2  # traces per step
    grad_accum: int = 1  # steps whose gradients add up before an update
    max_length: int = 4096  # the pipeline's and the cloud ladder's; longer traces are left out (and said so)
    max_steps: int = -1  # stop after this many steps; -1: the epochs decide
    save_steps: int = 25  # steps between checkpoints (a rerun resumes from the last)
    seed: int = 0  # seeds the trainer (LoRA init, shuffling)
    # Continue this LoRA adapter instead of starting a new one (its rank and targets are kept; the lora_*
    # keys are then unused). Rejection fine-tuning uses it to train the sampled policy further.
    init_adapter: str | None = None
    collation: str = "per_trace"  # per_trace (one trace a forward, logits on assistant positions) | padded

    def resolved(self) -> "SFTConfig":
        """The preset's values for every key left unset."""
        if self.preset not in (*PRESETS, "none"):
            raise ConfigError(f"unknown SFT preset {self.preset!r}; known: {', '.join(PRESETS)}, none")
        if self.collation not in ("per_trace", "padded"):
            raise ConfigError(f"unknown SFT collation {self.collation!r}; known: per_trace, padded")
        base = PRESETS.get(self.preset, PRESETS["seed000"])
        return replace(self, **{k: v for k, v in base.items() if getattr(self, k) is None})


def target_modules(spec: str):
    if spec == "attention":
        return ATTENTION
    if spec == "all-linear":
        return "all-linear"
    return [s.strip() for s in spec.split(",") if s.strip()]


def fit_traces(traces: list[dict], tokenizer, chat_template: str, max_length: int, *, what: str = "traces",
               log=None) -> tuple[list[dict], list[dict], dict]:
    """Tokenise every trace; leave out (never cut: a cut trace loses its final answer) those longer than
    max_length and those the chat template cannot render. Returns (kept traces, their rows, a report) and
    prints one line per kind of drop, with the count and the fix."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    kept, rows, too_long, refused = [], [], [], {}
    for t in traces:
        try:
            row = tokenize_conversation(tokenizer, t["messages"], t.get("tools"), chat_template)
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
    tokenizer = load_tokenizer(resolve_model(model))
    template = chat_templates(tokenizer).training
    lengths: list[int | float] = []
    for t in traces:
        try:
            lengths.append(len(tokenize_conversation(tokenizer, t["messages"], t.get("tools"), template)["input_ids"]))
        except (TemplateError, jinja2.TemplateError):
            lengths.append(float("inf"))
    return lengths


def select_traces(traces: list[dict], *, model: str, max_length: int, max_traces: int | None,
                  seed: int) -> tuple[list[dict], int, int]:
    """The traces SFT trains on: those that fit `max_length` tokens of the model's training template, then
    at most `max_traces` of them balanced over sources (`sample_traces`), so SFT drops none and every type
    that fits is drawn. Returns (traces, their tokens, how many were left out as too long)."""
    lengths = trace_lengths(traces, model)
    fit = [(t, n) for t, n in zip(traces, lengths) if n <= max_length]
    train = sample_traces([t for t, _ in fit], max_traces, seed)
    picked = {id(t) for t in train}
    return train, int(sum(n for t, n in fit if id(t) in picked)), len(traces) - len(fit)


def labelled_logits(model, labels, **inputs):
    """One sequence's forward with the LM head only at the positions whose next token is labelled (not -100),
    through `logits_to_keep`: (the model's outputs, those positions' logits, the tokens they predict). `labels`
    is the sequence's 1-D labels; `inputs` (input_ids and the like) hold that one sequence as a batch of 1."""
    target = labels[1:]
    keep = (target != -100).nonzero().flatten()
    outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
    return outputs, outputs.logits[0], target[keep]


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
            outputs, logits, target = labelled_logits(model, labels[0], **inputs)
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


def train_sft(cfg: SFTConfig, root: str | Path, *, model=None, tokenizer=None, max_seconds: float | None = None) -> dict:
    """Train (or resume) the adapter; returns a summary also written to `root/training.json`.

    `max_seconds` (the budget guard's time left) stops training at the first step past it, saves a
    checkpoint and the adapter, and marks the summary `stopped_early`; a rerun resumes from there."""
    cfg = cfg.resolved()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not Path(cfg.traces).exists():
        raise FileNotFoundError(f"no traces file at {cfg.traces}")
    identity = run_identity(cfg, Path(cfg.traces))
    check_same_run(root, identity)
    previous = _previous_summary(root)
    if (previous and not previous.get("stopped_early") and (root / "adapter_model.safetensors").exists()
            and previous.get("config") == json.loads(json.dumps(asdict(cfg), default=str))):
        return previous  # this very run finished: training again would do 0 steps and log nothing
    traces = _read_traces(Path(cfg.traces))
    use_qlora = False
    if model is None:
        model, tokenizer, templates, use_qlora = load_model_for_training(cfg)
    else:
        templates = chat_templates(tokenizer)
    if cfg.init_adapter:
        model = continue_adapter(model, cfg.init_adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kept, rows, dropped = fit_traces(traces, tokenizer, templates.training, cfg.max_length)
    if not rows:
        raise ConfigError(f"none of the {len(traces)} traces in {cfg.traces} can train: {dropped['too_long']} are "
                          f"longer than max_length={cfg.max_length} tokens, {dropped['template_refused']} refused by "
                          "the chat template; raise --max-length")
    # Inference after training renders with the training template: prove on one trace that every prompt the
    # agent will see is a prefix of what was trained on (raises TemplateError, a one-line CLI error).
    check_prompts_are_prefixes(tokenizer, kept[0]["messages"], kept[0].get("tools"), templates)
    log = TrainingLog(max_seconds)
    trainer = _sft_trainer(cfg, root, model, tokenizer, rows, log)
    write_json(root / RUN_FILE, identity)  # written once training really starts: a failed load blocks no rerun
    checkpoint = last_checkpoint(root / "checkpoints")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.model.save_pretrained(root)
    tokenizer.chat_template = templates.training
    tokenizer.save_pretrained(root)
    summary = {
        "config": asdict(cfg),
        "qlora": use_qlora,
        "traces": len(kept),
        "traces_given": len(traces),
        "too_long_dropped": dropped["too_long"],
        "template_refused": dropped["template_refused"],
        "chat_template": templates.source,
        "tokens": sum(len(r["input_ids"]) for r in rows),
        "assistant_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in rows),
        "steps": trainer.state.global_step,
        "steps_per_epoch": math.ceil(len(rows) / (cfg.batch_size * cfg.grad_accum)),
        "train_loss": float(result.training_loss),
        "seconds": log.seconds,
        "cpu_seconds": log.cpu_seconds,  # process CPU time of training: on a shared machine, the work done
        "stopped_early": log.stopped,
        # What the leakage guard reads: ids, answers and question texts trained on (and a continued adapter's).
        **training_record(kept, base_adapter=cfg.init_adapter),
        "sources": dict(Counter(t.get("source", "?").split(":")[0] for t in kept)),
    }
    losses = log.losses
    if previous and checkpoint:
        # resumed from a checkpoint (a deadline stopped it, or more steps were asked for): the summary and the
        # curve cover every session of the run, not only the last
        losses = [x for x in _previous_losses(root) if x["step"] < (losses[0]["step"] if losses else math.inf)] + losses
        summary["seconds"] += previous.get("seconds", 0.0)
        summary["cpu_seconds"] += previous.get("cpu_seconds", 0.0)
        if losses:
            summary["train_loss"] = math.fsum(x["loss"] for x in losses) / len(losses)
    write_json(root / "training.json", summary)
    write_json(root / "loss.json", losses)
    return summary


def _previous_summary(root: Path) -> dict | None:
    """The training.json an earlier session of this run left (None when there is none or it is unreadable)."""
    try:
        return json.loads((root / "training.json").read_text())
    except (OSError, ValueError):
        return None


def _previous_losses(root: Path) -> list[dict]:
    try:
        return [x for x in json.loads((root / "loss.json").read_text()) if "step" in x and "loss" in x]
    except (OSError, ValueError, TypeError):
        return []


def _read_traces(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"no traces file at {path}")
    traces = read_jsonl(path)
    if not traces:
        raise ConfigError(f"{path} holds no traces: nothing to train on")
    return traces


def _sft_trainer(cfg: SFTConfig, root: Path, model, tokenizer, rows: list[dict], log: "TrainingLog"):
    """TRL's SFTTrainer over pre-tokenised rows (labels already masked), a new LoRA unless one is continued."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

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
        bf16=torch.cuda.is_available(),
        fp16=False,
        activation_checkpointing=False,
        max_length=None,  # fit_traces already left out what is longer
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=target_modules(cfg.target_modules), task_type="CAUSAL_LM")
    trainer_cls = assistant_only_trainer() if per_trace else SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=None if cfg.init_adapter else peft_config, callbacks=[log.callback()])
    # With tqdm off the Trainer prints every log dict; loss.json keeps the curve instead.
    trainer.remove_callback(PrinterCallback)
    return trainer


def last_checkpoint(directory: Path) -> str | None:
    """The newest complete `checkpoint-<step>` under `directory` (a rerun resumes there), or None: a process
    killed while saving leaves a folder without its trainer state or weights, which the Trainer refuses."""
    def complete(p: Path) -> bool:
        return (p / "trainer_state.json").exists() and any(
            (p / name).exists() for name in ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin"))

    found = [p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and complete(p)]
    return str(max(found, key=lambda p: int(p.name.split("-")[-1]))) if found else None


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


class TrainingLog:
    """What a Trainer run leaves besides its weights: the loss curve, the wall time, and whether the
    deadline (`max_seconds`, the budget's time left) stopped it, saving a checkpoint first."""

    def __init__(self, max_seconds: float | None = None):
        self.max_seconds = max_seconds
        self.losses: list[dict] = []
        self.started = time.perf_counter()
        self.started_cpu = time.process_time()
        self.ended: float | None = None
        self.ended_cpu: float | None = None
        self.stopped = False

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def cpu_seconds(self) -> float:
        return (self.ended_cpu or time.process_time()) - self.started_cpu

    def callback(self):
        from transformers import TrainerCallback

        log = self

        class Log(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                log.started, log.started_cpu = time.perf_counter(), time.process_time()

            def on_train_end(self, args, state, control, **kw):
                log.ended, log.ended_cpu = time.perf_counter(), time.process_time()

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    log.losses.append({"step": state.global_step, "epoch": state.epoch, "loss": float(logs["loss"])})

            def on_step_end(self, args, state, control, **kw):
                if log.max_seconds is not None and log.seconds > log.max_seconds:
                    log.stopped = True
                    control.should_save = True
                    control.should_training_stop = True

        return Log()


def continue_adapter(model, adapter: str | Path):
    """`model` with the LoRA adapter at `adapter` on it, trainable (SFT, SimPO and GRPO continue one)."""
    from peft import PeftModel

    check_adapter(adapter)
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


def load_policy(model_name: str, adapter: str | Path | None, *, model=None, tokenizer=None):
    """(policy, tokenizer) to train further: the base model loaded where training runs (the one device rule:
    the probes' and rollouts' backend follows the weights, so nothing is left on the CPU while inputs go to
    the GPU), the adapter continued when given, the tokenizer with the adapter's chat template."""
    import torch
    from transformers import AutoModelForCausalLM

    if model is None:
        device = hf.default_device()  # looked up when called: a test puts the policy on its own device
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(resolve_model(model_name), dtype=dtype).to(device)
    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model(model_name), adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return (continue_adapter(model, adapter) if adapter else model), tokenizer
