"""Preference pairs from the model's own failures, and SimPO (or DPO) on top of the SFT adapter (the
enterprise recipe).

    hopsmith mine-pairs --results runs/ladder/mine/results.jsonl --chosen runs/ladder/kept.jsonl --out runs/ladder/pairs
    hopsmith simpo --pairs runs/ladder/pairs/pairs.jsonl --adapter runs/ladder/sft --out runs/ladder/simpo

Mining: every failed episode of the adapter (run on *train* questions) becomes `rejected`, verbatim; the
`chosen` side is a judged-correct trajectory for the same question (a kept synthetic or teacher trace,
or a correct resample of the model). Both continue the policy's own prompt (its system and user turns).
Each pair is tagged with its failure kind (wrong_answer, no_search, invalid_call, out_of_turns), kinds
are balanced round-robin, identical pairs are dropped, and a pair whose question is in a bundled eval
split is refused: the eval split stays unseen. `pairs.jsonl` is TRL's conversational preference format
(`prompt`, `chosen`, `rejected` as message lists) plus `tools`, `question_id` and `why`.

Training: TRL's CPOTrainer with `loss_type="simpo"`, `cpo_alpha=0` (SimPO), or DPOTrainer (`--loss dpo`,
the SFT policy as the frozen reference), continuing the SFT adapter. Loss is on the assistant tokens of
chosen and rejected only (tool results are the environment's words, not the model's). SimPO scores each
side of each pair in its own unpadded forward with the LM head only where the policy wrote the next token
(`sequence_logps`; `benchmarks/simpo_speed.py`: 2.07x TRL's padded batch, the same losses). Every
`probe_every` steps a greedy probe on train questions logs tool use, answered-without-search, query
diversity and turns (`behaviour.json`); the collapse guard stops training when tool use collapses.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from hopsmith.agent.loop import run_episodes
from hopsmith.backends.hf import HFBackend, check_adapter
from hopsmith.backends.templates import chat_templates, render, tokenize_conversation
from hopsmith.collapse import CollapseGuard, behaviour
from hopsmith.config import AgentConfig, ConfigError, flat_knobs
from hopsmith.data import BUNDLED, load_questions, load_with_pools
from hopsmith.envs import multihop
from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.leakage import training_record
from hopsmith.traces import sample_traces
from hopsmith.training import TrainingLog, labelled_logits, load_policy

FAILURE_KINDS = ("wrong_answer", "no_search", "invalid_call", "out_of_turns")


class PreferenceError(ValueError):
    pass


def failure_tag(row: dict) -> str | None:
    """Why an episode failed, for pair balancing; None when it is correct. "out_of_turns" covers every
    episode that ended without an answer (turn cap, context overflow, an empty reply)."""
    if (row.get("metrics") or {}).get("acc", 0.0) >= 1.0:
        return None
    if not row.get("finished"):
        return "out_of_turns"
    calls = row.get("tool_calls") or []
    if not any(c.get("name") == "search" and c.get("valid") for c in calls):
        return "no_search"
    if any(not c.get("valid") for c in calls):
        return "invalid_call"
    return "wrong_answer"


def _continuation(messages: list[dict]) -> list[dict]:
    """The turns after the system and first user message (what the policy wrote and the tools answered)."""
    start = next((i + 1 for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    return [{k: v for k, v in m.items() if k in ("role", "content", "name", "tool_calls")} for m in messages[start:]]


def _question_of(messages: list[dict]) -> str:
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    return user.split("\n", 1)[0].removeprefix("Question:").strip()


def _digest(msgs: list[dict]) -> str:
    return hashlib.sha1(json.dumps(msgs, sort_keys=True).encode()).hexdigest()[:16]


def _eval_ids() -> set[str]:
    return {q.id for name in BUNDLED for q in load_questions(name, split="eval")}


def mine_pairs(results: list[dict], chosen: list[dict], *, max_pairs: int | None = None, seed: int = 0,
               allow_eval_questions: bool = False) -> dict:
    """Pairs (rejected = a failing episode, chosen = a correct trajectory of the same question)."""
    eval_ids = set() if allow_eval_questions else _eval_ids()
    leaked = sorted({r["question_id"] for r in results if r["question_id"] in eval_ids})
    if leaked:
        raise PreferenceError(f"{len(leaked)} mined questions are in a bundled eval split (e.g. {leaked[0]}); "
                              "mine on the train split so the eval stays unseen")
    good: dict[str, list[dict]] = {}
    for t in chosen:
        judged = (t.get("judge") or {}).get("verdict", "pass") == "pass"
        correct = (t.get("metrics") or {}).get("acc", 1.0) >= 1.0
        searched = any(m["role"] == "tool" for m in t.get("messages", []))
        if judged and correct and searched:
            good.setdefault(t["question_id"], []).append(t)
    pairs, seen, skipped = [], set(), {"correct": 0, "no_chosen": 0, "duplicate": 0}
    for row in results:
        kind = failure_tag(row)
        if kind is None:
            skipped["correct"] += 1
            continue
        candidates = good.get(row["question_id"]) or []
        if not candidates:
            skipped["no_chosen"] += 1
            continue
        prompt = [{k: m[k] for k in ("role", "content")} for m in row["messages"][:2]]
        rejected = _continuation(row["messages"])
        for c in candidates:
            chosen_msgs = _continuation(c["messages"])
            key = (row["question_id"], _digest(rejected), _digest(chosen_msgs))
            if key in seen or chosen_msgs == rejected:
                skipped["duplicate"] += 1
                continue
            seen.add(key)
            pairs.append({"id": f"{row['question_id']}:{len(pairs)}", "question_id": row["question_id"],
                          "prompt": prompt, "chosen": chosen_msgs, "rejected": rejected, "tools": c.get("tools"),
                          "why": kind, "source": kind, "chosen_source": c.get("source", "?"),
                          "rejected_prediction": row.get("prediction")})
    balanced = sample_traces(pairs, max_pairs, seed)  # round-robin over `source` = failure kind
    counts = {k: sum(1 for p in balanced if p["why"] == k) for k in FAILURE_KINDS}
    return {"pairs": balanced, "counts": counts, "mined": len(pairs), "skipped": skipped}


@dataclass(frozen=True)
class MineConfig:
    """`hopsmith mine-pairs`: the model's failed episodes against correct trajectories of the same questions."""

    results: str = "results.jsonl"  # the adapter's episodes on train questions
    chosen: str = "kept.jsonl"  # judged-correct trajectories (synthetic or teacher traces, resamples)
    max_pairs: int | None = None  # keep at most this many, balanced over failure kinds
    seed: int = 0  # seeds which pairs a cap keeps
    allow_eval_questions: bool = False  # mine questions of a bundled eval split too (then that eval is not held out)


def mine(cfg: MineConfig, root: str | Path) -> dict:
    root = Path(root)
    for path in (cfg.results, cfg.chosen):
        if not Path(path).exists():
            raise FileNotFoundError(f"no such file: {path}")
    out = mine_pairs(read_jsonl(cfg.results), read_jsonl(cfg.chosen), max_pairs=cfg.max_pairs, seed=cfg.seed,
                     allow_eval_questions=cfg.allow_eval_questions)
    write_jsonl(root / "pairs.jsonl", out["pairs"])
    summary = {k: v for k, v in out.items() if k != "pairs"} | {"pairs": len(out["pairs"]), "config": asdict(cfg)}
    write_json(root / "pairs_summary.json", summary)
    return summary


# -- training ---------------------------------------------------------------------------------------------

PRESETS = {
    # The enterprise recipe's SimPO: beta 1.0, gamma 0.3, lr 5e-7, 2 epochs, tight gradient clipping.
    "seed002": dict(loss="simpo", beta=1.0, gamma=0.3, learning_rate=5e-7, epochs=2.0, max_grad_norm=0.3),
    "dpo": dict(loss="dpo", beta=0.1, gamma=0.0, learning_rate=5e-6, epochs=2.0, max_grad_norm=1.0),
}


@flat_knobs
@dataclass(frozen=True)
class PreferenceConfig:
    """`hopsmith simpo`: SimPO (or DPO) on preference pairs, continuing an SFT adapter."""

    pairs: str = "pairs.jsonl"  # TRL preference pairs (prompt, chosen, rejected as message lists)
    preset: str = "seed002"  # seed002 (the enterprise recipe's SimPO) | dpo; the keys below override it
    loss: str | None = None  # simpo | dpo
    beta: float | None = None  # SimPO's reward scale / DPO's KL weight
    gamma: float | None = None  # SimPO's target reward margin
    learning_rate: float | None = None  # the optimiser's learning rate
    epochs: float | None = None  # passes over the pairs
    max_grad_norm: float | None = None  # gradient clipping
    batch_size: int = 2  # pairs per step
    max_length: int = 4096  # as SFT's; a pair with a longer side is left out (and counted)
    max_steps: int = -1  # stop after this many steps; -1: the epochs decide
    probe_every: int = 0  # steps between behaviour probes (0: before and after only)
    probe_data: str = "musique"  # the set whose train questions the probes play
    probe_questions: int = 4  # questions per probe (0: no probes, for a policy of another environment)
    min_tool_use: float = 0.5  # the collapse guard's floor
    stop_on_collapse: bool = True  # stop training when the guard flags a collapse
    seed: int = 0  # seeds the trainer
    # SimPO's forward: per_trace (each side of each pair alone, unpadded, logits only where the policy wrote the
    # next token) | padded (TRL's: chosen and rejected padded into one batch, logits at every position)
    collation: str = "per_trace"
    # The policy trained (model, and adapter: the SFT adapter it continues) and how its probes play
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(adapter="sft", max_turns=4, max_new_tokens=96,
                                                                   top_k=3, max_chars=300, few_shot=False,
                                                                   extractor="none"),
                               metadata={"omit": ("env", "extractor", "batch_size"),
                                         "renamed": {"probe_turns": "max_turns"}})

    def resolved(self) -> "PreferenceConfig":
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preference preset {self.preset!r}; known: {', '.join(PRESETS)}")
        cfg = replace(self, **{k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None})
        if cfg.loss not in ("simpo", "dpo"):
            raise ConfigError(f"PreferenceConfig.loss must be simpo or dpo, got {cfg.loss!r}")
        if cfg.collation not in ("per_trace", "padded"):
            raise ConfigError(f"unknown preference collation {cfg.collation!r}; known: per_trace, padded")
        return cfg


def _tokenized_pair(pair: dict, tokenizer, template: str, max_length: int) -> dict | None:
    """Both sides tokenised with the training template and assistant-only labels; None when either side is
    longer than max_length (the caller counts and reports those)."""
    prompt_text = render(tokenizer, template, pair["prompt"], pair.get("tools"), add_generation_prompt=False)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    out = {"prompt_input_ids": [], "prompt_attention_mask": []}
    for side in ("chosen", "rejected"):
        tok = tokenize_conversation(tokenizer, pair["prompt"] + pair[side], pair.get("tools"), template)
        if len(tok["input_ids"]) > max_length:
            return None
        out[f"{side}_input_ids"] = tok["input_ids"]
        out[f"{side}_attention_mask"] = tok["attention_mask"]
        out[f"{side}_labels"] = tok["labels"]
        out["prompt_input_ids"] = tok["input_ids"][:n_prompt]
        out["prompt_attention_mask"] = [1] * n_prompt
    return out


def probe(model, tokenizer, cfg: PreferenceConfig, questions, pools) -> dict:
    """Greedy episodes of the model being trained, summarised by `hopsmith.collapse.behaviour`."""
    was_training = model.training
    backend = HFBackend(model_obj=model, tokenizer=tokenizer, batch_size=len(questions))
    rows = run_episodes(questions, multihop.make(cfg.agent, pools=pools), backend, cfg.agent)
    if was_training:
        model.train()
    return behaviour(rows)


def train(cfg: PreferenceConfig, root: str | Path, *, model=None, tokenizer=None) -> dict:
    """SimPO/DPO on the pairs, continuing `cfg.agent.adapter`; writes the new adapter and `training.json`."""
    cfg = cfg.resolved()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pairs = _read_pairs(cfg.pairs)
    check_adapter(cfg.agent.adapter)
    model, tokenizer = load_policy(cfg.agent.model, cfg.agent.adapter, model=model, tokenizer=tokenizer)
    # The SFT adapter saved the template it was trained with; SimPO trains, probes and saves with the same one.
    template = chat_templates(tokenizer).training
    tokenizer.chat_template = template
    rows = [r for r in (_tokenized_pair(p, tokenizer, template, cfg.max_length) for p in pairs) if r is not None]
    if len(rows) < len(pairs):
        print(f"simpo: left out {len(pairs) - len(rows)} of {len(pairs)} pairs with a side longer than max_length="
              f"{cfg.max_length} tokens; raise --max-length to train on them", file=sys.stderr, flush=True)
    if not rows:
        raise PreferenceError(f"every pair in {cfg.pairs} is longer than max_length={cfg.max_length}")
    probes = Probes(cfg, tokenizer)
    before = probes.run(model, step=0)
    log = TrainingLog()
    trainer = _trainer(cfg, model, tokenizer, rows, root, [log.callback(), probes.callback()])
    trainer.train()
    after = probes.run(trainer.model, step=trainer.state.global_step, final=True)
    trainer.model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    trained = training_record([{"question_id": p["question_id"], "question": _question_of(p["prompt"])} for p in pairs],
                              base_adapter=cfg.agent.adapter)
    summary = {"config": asdict(cfg), "pairs": len(pairs), "pairs_used": len(rows), "steps": trainer.state.global_step,
               "seconds": log.seconds, "behaviour_before": before, "behaviour_after": after, "collapse": probes.flags,
               "stopped_on_collapse": bool(probes.flags) and cfg.stop_on_collapse, **trained,
               "base_adapter": cfg.agent.adapter}
    write_json(root / "training.json", summary)
    write_json(root / "loss.json", probes.losses)
    write_json(root / "behaviour.json", probes.guard.history)
    return summary


def _read_pairs(path: str) -> list[dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"no pairs file at {path}")
    pairs = read_jsonl(path)
    if not pairs:
        raise PreferenceError(f"{path} holds no pairs: nothing to train on")
    return pairs


class Probes:
    """The collapse guard's probes: greedy episodes on a few train questions before training, every
    `probe_every` steps (a collapse stops training when `stop_on_collapse`) and after; and the log of
    every step's numbers (`loss.json`)."""

    def __init__(self, cfg: PreferenceConfig, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.questions, self.pools = ([], {}) if cfg.probe_questions == 0 else \
            load_with_pools(cfg.probe_data, split="train", limit=cfg.probe_questions)
        self.guard = CollapseGuard(min_tool_use=cfg.min_tool_use)
        self.flags: list[dict] = []
        self.losses: list[dict] = []

    def run(self, model, *, step: int, final: bool = False) -> dict:
        """Probe `model` at `step`; a collapse is flagged during and after training (once per step)."""
        if not self.questions:
            return {}
        stats = probe(model, self.tokenizer, self.cfg, self.questions, self.pools)
        reasons = self.guard.check(stats, step=step)
        if reasons and (step or final) and not any(f["step"] == step for f in self.flags):
            self.flags.append({"step": step, "reasons": reasons})
        return stats

    def callback(self):
        from transformers import TrainerCallback

        probes = self

        class Watch(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    probes.losses.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                                        if isinstance(v, (int, float))}})

            def on_step_end(self, args, state, control, **kw):
                if probes.cfg.probe_every and state.global_step % probes.cfg.probe_every == 0:
                    flagged = len(probes.flags)
                    probes.run(kw["model"], step=state.global_step)
                    if len(probes.flags) > flagged and probes.cfg.stop_on_collapse:
                        control.should_training_stop = True

        return Watch()


def _trainer(cfg: PreferenceConfig, model, tokenizer, rows: list[dict], root: Path, callbacks):
    """CPOTrainer as SimPO, or DPOTrainer with the SFT policy as reference, over the pre-tokenised pairs."""
    import torch  # torch, datasets and TRL load only when preference training runs
    from datasets import Dataset
    from transformers import PrinterCallback

    dataset = Dataset.from_list(rows)
    common = dict(output_dir=str(root / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
                  per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                  max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="cosine", logging_steps=1, save_strategy="no",
                  report_to=[], seed=cfg.seed, bf16=torch.cuda.is_available(), fp16=False, remove_unused_columns=False,
                  disable_tqdm=True, max_length=cfg.max_length, beta=cfg.beta)
    trainer = _simpo_or_dpo(cfg, model, tokenizer, dataset, common, callbacks)
    trainer.remove_callback(PrinterCallback)
    return trainer


def _simpo_or_dpo(cfg: PreferenceConfig, model, tokenizer, dataset, common: dict, callbacks):
    if cfg.loss == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        per_trace = cfg.collation == "per_trace"

        class PretokenizedCPO(CPOTrainer):
            # Rows arrive tokenized with assistant-only labels; TRL's own tokenisation would also score tool results.
            def tokenize_row(self, feature, model=None):
                return feature

            def concatenated_forward(self, model, batch):
                if not per_trace or self.cpo_alpha != 0 or self.aux_loss_enabled or self.is_encoder_decoder:
                    return super().concatenated_forward(model, batch)
                average = self.loss_type in ("ipo", "simpo")
                chosen, chosen_logits = sequence_logps(model, batch["chosen_input_ids"], batch["chosen_attention_mask"],
                                                       batch["chosen_labels"], average=average)
                rejected, rejected_logits = sequence_logps(model, batch["rejected_input_ids"],
                                                           batch["rejected_attention_mask"], batch["rejected_labels"],
                                                           average=average)
                return chosen, rejected, chosen_logits, rejected_logits, chosen.new_zeros(())

        args = CPOConfig(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=cfg.gamma, **common)
        return PretokenizedCPO(model=model, args=args, train_dataset=_with_text(dataset), processing_class=tokenizer,
                               callbacks=callbacks)
    from trl import DPOConfig, DPOTrainer

    # With a PeftModel that already holds a trained adapter, TRL loads a frozen copy of it as "ref":
    # the reference is the SFT policy, not the bare base model.
    class PretokenizedDPO(DPOTrainer):
        # Rows arrive as prompt_ids / chosen_ids / rejected_ids rendered with our template, plus which
        # completion tokens the model wrote; the collator below scores only those, as the SimPO path does.
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    args = DPOConfig(**{k: v for k, v in common.items()})
    trainer = PretokenizedDPO(model=model, ref_model=None, args=args, train_dataset=_dpo_rows(dataset),
                              processing_class=tokenizer, callbacks=callbacks)
    trainer.data_collator = assistant_only_collator(trainer.data_collator)
    return trainer


def sequence_logps(model, input_ids, attention_mask, labels, *, average: bool):
    """Each row's log-probability of its labelled tokens (the mean over them with `average`, SimPO's length
    normalisation; else the sum), as TRL's `get_batch_logps` computes it on the padded batch, but one row a
    forward without its padding, and the LM head and log-softmax only at the positions whose next token is
    labelled (`logits_to_keep`): on a 49k vocabulary that is most of the work TRL spends on prompt and tool
    results. Returns (logps, the mean logit at the kept positions), one value per row."""
    import torch

    logps, mean_logits = [], []
    for ids, mask, lab in zip(input_ids, attention_mask, labels):
        real = mask.bool()
        if not (lab[real][1:] != -100).any():
            raise PreferenceError("a preference side has no token the policy wrote: nothing to score")
        _, logits, target = labelled_logits(model, lab[real], input_ids=ids[real][None])
        logits = logits.float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None]).squeeze(-1)
        logps.append(token_logps.mean() if average else token_logps.sum())
        mean_logits.append(logits.detach().mean())
    return torch.stack(logps), torch.stack(mean_logits)


def assistant_only_collator(collator):
    """TRL's DataCollatorForPreference marks every completion token for the loss, tool results included;
    this wraps it so `completion_mask` keeps only the tokens the policy wrote (rows' `chosen_mask` /
    `rejected_mask`, 1 where the SFT labels are not -100)."""
    import torch

    def collate(examples):
        out = collator(examples)
        masks = [[0] * len(e["prompt_ids"]) + list(e[side]) for side in ("chosen_mask", "rejected_mask")
                 for e in examples]
        width = out["completion_mask"].shape[1]
        mask = torch.zeros_like(out["completion_mask"])
        for i, m in enumerate(masks):
            m = m[:width]  # TRL cuts at max_length keeping the start; rows here are already within it
            mask[i, : len(m)] = torch.tensor(m, dtype=mask.dtype)
        out["completion_mask"] = mask * out["completion_mask"]
        return out

    return collate


def _with_text(dataset):
    # CPOTrainer maps maybe_extract_prompt / maybe_apply_chat_template over the rows first; give it the
    # string columns they look for (unused afterwards, since tokenize_row keeps the pre-tokenized ids).
    return dataset.map(lambda r: {"prompt": "", "chosen": "", "rejected": ""})


def _dpo_rows(dataset):
    def to_dpo(r):
        n = len(r["prompt_input_ids"])
        return {"prompt_ids": r["prompt_input_ids"], "chosen_ids": r["chosen_input_ids"][n:],
                "rejected_ids": r["rejected_input_ids"][n:],
                "chosen_mask": [int(x != -100) for x in r["chosen_labels"][n:]],
                "rejected_mask": [int(x != -100) for x in r["rejected_labels"][n:]]}
    return dataset.map(to_dpo, remove_columns=dataset.column_names)
