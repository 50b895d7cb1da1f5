"""GRPO with the search tools, multi-turn (the RL recipe and the code-as-action recipe), on a LoRA adapter,
through TRL's GRPOTrainer.

    hopsmith grpo --adapter runs/ladder/sft --max-steps 20 --out runs/ladder/grpo

Rollouts are our own agent loop (`rollout_func`): each train question is played `num_generations` times,
rollout k of a group at its own temperature from `temperature_min`..`temperature_max` (the code-as-action
recipe: 20 rollouts at 0.7-1.15). The whole episode (assistant turns and tool results) is the completion; tool
results are masked out of the loss (`env_mask`). The reward is 0.75 x correctness + 0.25 x approach plus
format terms (`reward`): correctness is the rule (gold contained in the answer) or, with a judge, the
judge's correctness score; approach is the judge's search-approach score or a rule score (searched,
valid calls, no repeated queries).

TRL normalises rewards per group and so drops every group whose rewards have no variance. The code-as-action
recipe keeps their signal instead: when a group's std < 0.01, skip it if its mean < 0.1, else use r - 0.5 as the
advantage. `HopsmithGRPOTrainer` replaces TRL's advantages with that rule after each generation step and
counts the groups each branch took. Every step logs tool use, answered-without-search, query diversity
and turns of its rollouts (`behaviour.json`); the collapse guard stops training when tool use collapses.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hopsmith.agent.loop import run_episodes
from hopsmith.backends.hf import HFBackend, check_adapter
from hopsmith.backends.templates import chat_templates, render, tokenize_conversation
from hopsmith.collapse import CollapseGuard, behaviour
from hopsmith.config import AgentConfig, ConfigError, flat_knobs
from hopsmith.data import load_with_pools
from hopsmith.envs import get_env
from hopsmith.io import write_json
from hopsmith.judge import LLMJudge, judge_backend as make_judge_backend
from hopsmith.leakage import training_record
from hopsmith.runlock import locked
from hopsmith.tools.extract import Extractor
from hopsmith.training import load_policy


@flat_knobs
@dataclass(frozen=True)
class GRPOConfig:
    """`hopsmith grpo`: GRPO with multi-turn search rollouts on a LoRA adapter."""

    data: str = "musique"  # bundled set or file whose train split the rollouts play
    limit: int | None = None  # train questions
    num_generations: int = 4  # group size (the code-as-action recipe: 20)
    questions_per_step: int = 1  # groups per optimiser step
    # Rollouts per forward and backward pass: a step's rollouts are split into gradient-accumulation passes of
    # this many, which bounds training memory (8 multi-turn episodes in one pass took 24 GB on the embedded model)
    micro_batch: int = 2
    temperature_min: float = 0.7  # the coolest rollout of a group
    temperature_max: float = 1.15  # the hottest rollout of a group
    judge: str | None = None  # backend spec; None: rule correctness and rule approach
    correctness_weight: float = 0.75  # reward weight of the answer's correctness
    approach_weight: float = 0.25  # reward weight of the search approach
    format_bonus: float = 0.05  # a final answer given with FINAL(...)
    invalid_penalty: float = 0.05  # per invalid call, at most 0.2
    learning_rate: float = 1e-5  # the optimiser's learning rate
    max_steps: int = 20  # optimiser steps
    lora_r: int = 16  # rank of a fresh LoRA (no adapter given)
    min_tool_use: float = 0.3  # the collapse guard's floor for the rollouts' tool use
    stop_on_collapse: bool = True  # stop training when the guard flags a collapse
    seed: int = 0  # seeds the trainer
    # The policy (model, adapter: continue the SFT one; none: a fresh LoRA on the base model) and its
    # rollouts; each rollout's temperature comes from the range above.
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(max_turns=4, max_new_tokens=96, top_k=3, max_chars=300,
                                                                   few_shot=False),
                               metadata={"omit": ("temperature", "thinking", "extractor")})

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError("GRPOConfig.num_generations must be >= 2: advantages compare rollouts of a group")
        if not 0 < self.temperature_min <= self.temperature_max:
            raise ConfigError("GRPOConfig: need 0 < temperature_min <= temperature_max")
        rollouts = self.num_generations * self.questions_per_step
        if self.micro_batch < 1 or rollouts % self.micro_batch:
            raise ConfigError(f"GRPOConfig.micro_batch must divide the {rollouts} rollouts of a step "
                              f"(num_generations x questions_per_step), got {self.micro_batch}")


def temperatures(cfg: GRPOConfig) -> list[float]:
    """One temperature per rollout of a group, evenly over the range."""
    n = cfg.num_generations
    step = (cfg.temperature_max - cfg.temperature_min) / (n - 1)
    return [round(cfg.temperature_min + k * step, 4) for k in range(n)]


def rule_approach(row: dict) -> float:
    """Search approach without a judge: searched at all, every call valid, no query asked twice. A program
    (the wikicode environment) counts as a search when it called a primitive, and as valid when it ran."""
    calls = row.get("tool_calls") or []
    if any(c.get("name") == "python" for c in calls):
        programs = [c for c in calls if c.get("valid") and c.get("primitives")]
        codes = [(c.get("arguments") or {}).get("code", "") for c in calls]
        score = 0.5 if programs else 0.0
        score += 0.25 if calls and all(c.get("status") == "ok" for c in calls) else 0.0
        score += 0.25 if programs and len(set(codes)) == len(codes) else 0.0
        return score
    searches = [c for c in calls if c.get("name") == "search" and c.get("valid")]
    queries = [" ".join(str((c.get("arguments") or {}).get("query", "")).lower().split()) for c in searches]
    score = 0.5 if searches else 0.0
    score += 0.25 if calls and all(c.get("valid") for c in calls) else 0.0
    score += 0.25 if searches and len(set(queries)) == len(queries) else 0.0
    return score


def reward(row: dict, cfg: GRPOConfig, judged: dict | None = None) -> dict:
    """The reward of one episode and its parts. `judged`: the LLM judge's reply (correctness, search_approach: 1-5)."""
    correct = float((row.get("metrics") or {}).get("acc", 0.0))
    approach = rule_approach(row)
    if judged and judged.get("verdict") not in (None, "judge_error"):
        if "correctness" in judged:
            correct = (float(judged["correctness"]) - 1) / 4
        if "search_approach" in judged:
            approach = (float(judged["search_approach"]) - 1) / 4
    invalid = sum(1 for c in row.get("tool_calls") or [] if not c.get("valid"))
    fmt = (cfg.format_bonus if row.get("finished") else 0.0) - min(0.2, cfg.invalid_penalty * invalid)
    total = cfg.correctness_weight * correct + cfg.approach_weight * approach + fmt
    return {"total": total, "correctness": correct, "approach": approach, "format": fmt}


def group_advantages(rewards: list[float], group: int) -> tuple[list[float], dict]:
    """Group-relative advantages with the code-as-action recipe's zero-variance fallback; and how many groups took
    each branch."""
    if len(rewards) % group:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group}")
    out, counts = [], {"normalised": 0, "skipped_low": 0, "fallback_r_minus_half": 0}
    for i in range(0, len(rewards), group):
        r = rewards[i:i + group]
        mean, std = statistics.fmean(r), statistics.pstdev(r)
        if std < 0.01:
            if mean < 0.1:
                out += [0.0] * group
                counts["skipped_low"] += 1
            else:
                out += [x - 0.5 for x in r]
                counts["fallback_r_minus_half"] += 1
        else:
            out += [(x - mean) / (std + 1e-4) for x in r]
            counts["normalised"] += 1
    return out, counts


def episode_tokens(row: dict, tools: list[dict], tokenizer, template: str) -> dict:
    """prompt_ids, completion_ids and env_mask (1 = the model's own token) of a finished episode, rendered
    with the training template the rollouts were prompted with."""
    # thinking=False as the rollouts' AgentConfig: a template that pre-fills an empty think block puts it
    # in the prompt here too, so the completion starts where the model's own tokens did.
    prompt_text = render(tokenizer, template, row["messages"][:2], tools, add_generation_prompt=True, thinking=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenize_conversation(tokenizer, row["messages"], tools, template)
    ids, labels = full["input_ids"], full["labels"]
    if ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError("the rendered prompt is not a prefix of the rendered episode; check the chat template")
    completion = ids[len(prompt_ids):]
    mask = [1 if lab != -100 else 0 for lab in labels[len(prompt_ids):]]
    return {"prompt_ids": prompt_ids, "completion_ids": completion, "env_mask": mask}


class Rollouts:
    """`rollout_func` for GRPOTrainer: plays the agent loop for every prompt TRL hands over."""

    def __init__(self, cfg: GRPOConfig, questions, pools, tokenizer, template: str, judge=None, first=None):
        self.cfg, self.pools, self.tokenizer, self.template, self.judge = cfg, pools, tokenizer, template, judge
        self.env = get_env(cfg.agent.env)
        # The question of each prompt, by its first user message (the environment wrote it).
        first = first or {}
        self.by_text = {first[q.id]: q for q in questions if q.id in first}
        self.tools: list[dict] = []
        self.rewards: list[float] = []
        self.history: list[dict] = []

    def __call__(self, prompts: list, trainer) -> dict:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        backend = HFBackend(model_obj=model, tokenizer=self.tokenizer, batch_size=len(prompts), chat_template=self.template)
        rows = self._play(prompts, backend)
        if was_training:
            model.train()
        tokens = [episode_tokens(r, self.tools, self.tokenizer, self.template) for r in rows]
        judged = self._judge(rows)
        parts = [reward(r, self.cfg, j) for r, j in zip(rows, judged)]
        self.rewards = [p["total"] for p in parts]
        stats = behaviour(rows)
        stats["reward_mean"] = sum(self.rewards) / len(self.rewards)
        stats["correct_rate"] = sum(p["correctness"] for p in parts) / len(parts)
        self.history.append({"step": trainer.state.global_step, **stats})
        return {"prompt_ids": [t["prompt_ids"] for t in tokens], "completion_ids": [t["completion_ids"] for t in tokens],
                "logprobs": None, "env_mask": [t["env_mask"] for t in tokens], "reward_total": self.rewards}

    def _play(self, prompts: list, backend) -> list[dict]:
        """One episode per prompt, rollout i at its group member's temperature, in prompt order."""
        temps = temperatures(self.cfg)
        jobs: dict[float, list] = {}
        for i, prompt in enumerate(prompts):
            q = self.by_text[next(m["content"] for m in prompt if m["role"] == "user")]
            # Rollout i is member i % G of its group (TRL repeats each prompt G times in a row).
            copy = dataclasses.replace(q, id=f"{q.id}#{i}")
            self.pools[copy.id] = self.pools[q.id]
            jobs.setdefault(temps[i % self.cfg.num_generations], []).append((i, copy))
        rows: list[dict | None] = [None] * len(prompts)
        for temp, items in sorted(jobs.items()):
            agent = dataclasses.replace(self.cfg.agent, temperature=temp)
            make_env = self.env.make(agent, pools=self.pools, extractor=Extractor(backend))
            self.tools = make_env(items[0][1]).tools
            order = {c.id: i for i, c in items}
            for row in run_episodes([c for _, c in items], make_env, backend, agent):
                rows[order[row["question_id"]]] = {**row, "temperature": temp}
        return rows

    def _judge(self, rows: list[dict]) -> list[dict | None]:
        if self.judge is None:
            return [None] * len(rows)
        traces = [{"messages": r["messages"], "answers": r["answers"], "answer": r["prediction"], "tools": self.tools}
                  for r in rows]
        return self.judge.judge_many(traces)


def _reward_from_rollout(prompts, completions, reward_total=None, **kw):
    """TRL's reward hook: the reward was computed with the episode in the rollout; pass it through."""
    return [float(r) for r in reward_total]


def make_trainer(cfg: GRPOConfig, root: Path, model, tokenizer, dataset, rollouts: Rollouts):
    import torch  # torch, peft and TRL load only when GRPO trains, never at `hopsmith --help`
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    guard = CollapseGuard(min_tool_use=cfg.min_tool_use)
    flags: list[dict] = []

    class HopsmithGRPOTrainer(GRPOTrainer):
        """TRL's GRPO with the code-as-action recipe's zero-variance fallback in place of its group normalisation."""

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            adv, counts = group_advantages(rollouts.rewards, cfg.num_generations)
            for k, v in counts.items():
                self.group_counts[k] += v
            out["advantages"] = torch.tensor(adv, dtype=out["advantages"].dtype, device=out["advantages"].device)
            return out

    class Guard(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if not rollouts.history:
                return
            last = rollouts.history[-1]
            print(f"grpo step {state.global_step}/{state.max_steps}: reward {last['reward_mean']:.3f}, correct "
                  f"{last['correct_rate']:.0%}, tool use {last['tool_use_rate']:.0%}, turns {last['mean_turns']:.1f}",
                  file=sys.stderr, flush=True)
            reasons = guard.check(last, state.global_step)
            if reasons:
                flags.append({"step": state.global_step, "reasons": reasons})
                if cfg.stop_on_collapse:
                    control.should_training_stop = True

    # One generation (every rollout of the step) per optimiser step, trained in passes of micro_batch rollouts.
    passes = cfg.num_generations * cfg.questions_per_step // cfg.micro_batch
    args = TRLConfig(output_dir=str(root / "checkpoints"), learning_rate=cfg.learning_rate, max_steps=cfg.max_steps,
                     per_device_train_batch_size=cfg.micro_batch, gradient_accumulation_steps=passes,
                     num_generations=cfg.num_generations, steps_per_generation=passes, beta=0.0, logging_steps=1,
                     save_strategy="no", report_to=[], seed=cfg.seed, bf16=torch.cuda.is_available(),
                     activation_checkpointing=False, disable_tqdm=True, remove_unused_columns=False)
    peft_config = None
    if not cfg.agent.adapter:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = HopsmithGRPOTrainer(model=model, reward_funcs=_reward_from_rollout, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, rollout_func=rollouts, peft_config=peft_config,
                                  callbacks=[Guard()])
    trainer.remove_callback(PrinterCallback)
    trainer.group_counts = {"normalised": 0, "skipped_low": 0, "fallback_r_minus_half": 0}
    return trainer, flags


@locked
def run(cfg: GRPOConfig, root: str | Path, *, model=None, tokenizer=None, judge_backend=None) -> dict:
    """Train the policy with GRPO into `root`; returns the summary in `training.json`."""
    from datasets import Dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    policy = cfg.agent
    if policy.adapter:
        check_adapter(policy.adapter)
    if judge_backend is None and cfg.judge:
        judge_backend = make_judge_backend(cfg.judge)  # checked (and a remote one contacted) before weights load
    judge = LLMJudge(judge_backend) if judge_backend is not None else None
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    questions, pools = load_with_pools(cfg.data, split="train", limit=cfg.limit)
    model, tokenizer = load_policy(policy.model, policy.adapter, model=model, tokenizer=tokenizer)
    # Rollouts are prompted, and their episodes tokenised, with the template the policy trains with.
    template = chat_templates(tokenizer).training
    tokenizer.chat_template = template
    # Each prompt is the environment's own opening (system prompt and question), as the rollouts see it.
    opener = get_env(policy.env).make(policy, pools=pools, extractor=None)
    prompts = {q.id: opener(q).messages[:2] for q in questions}
    dataset = Dataset.from_list([{"prompt": prompts[q.id], "question_id": q.id} for q in questions])
    first = {q.id: prompts[q.id][1]["content"] for q in questions}
    rollouts = Rollouts(cfg, questions, dict(pools), tokenizer, template, judge, first=first)
    trainer, flags = make_trainer(cfg, root, model, tokenizer, dataset, rollouts)
    started = time.perf_counter()
    trainer.train()
    trainer.model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    summary = {"config": asdict(cfg), "steps": trainer.state.global_step, "seconds": time.perf_counter() - started,
               "groups": dict(trainer.group_counts), "collapse": flags, "behaviour": rollouts.history,
               **training_record(questions, base_adapter=policy.adapter)}
    write_json(root / "training.json", summary)
    write_json(root / "behaviour.json", rollouts.history)
    (root / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1, default=str))
    return summary
