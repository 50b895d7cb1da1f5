"""The training ladder as one command: traces -> judge -> SFT -> base and tuned eval -> comparison.

    hopsmith pipeline --out runs/ladder                 # the local preset: minutes on a laptop CPU
    hopsmith pipeline --preset full --out runs/full     # seed 000's recipe, where the hardware allows
    hopsmith pipeline --with simpo --out runs/ladder    # then own-failure pairs -> SimPO -> eval (seed 002)
    hopsmith pipeline --with rft,simpo --out runs/ladder    # RFT (seed 001) first, then SimPO on its own pairs

Every stage writes under the run root and resumes, so an interrupted ladder continues where it stopped:
`eval-base/`, `traces/`, `judged/`, `kept.jsonl`, `train.jsonl` (the traces SFT used), `sft/` (the adapter),
`eval-sft/`, and `comparison.json` / `comparison.txt` (base vs tuned, every metric with its CI, the failure
taxonomy side by side), and last `report.html` (every number, curve and episode of the ladder in one page:
`hopsmith report`). With `--with simpo`: `mine/` (the SFT adapter on train questions), `pairs/`
(its failures against correct traces), `simpo/` (the adapter, its behaviour probes and collapse flags),
`eval-simpo/` and `comparison-simpo.txt` / `.json` (SFT vs SimPO, with tool-use behaviour before and after).
With `--with rft`: `rft/` (the kept adapter's samples, the kept ones, the adapter trained on them), `eval-rft/`
and `comparison-rft.txt` / `.json`. With the default `--pair-chosen policy`, `mine/` is replaced by the
policy's own samples (`rft/samples.jsonl`, or `rft-<adapter>/` when the adapter kept is not SFT's).
Training questions come from the `train` split and evaluation from `eval`; the
leakage guard refuses any overlap.

After every training stage the collapse guard (`hopsmith.guard.promote`) compares the new adapter's tool use
and invalid-call rate with the adapter the ladder kept so far, paired on the same questions: one whose tool
use fell or whose invalid calls rose beyond the paired 95% interval is flagged and not promoted, and so is one
the paired tests find worse on some metric and better on none. A stage after SFT must also earn its place:
when the paired tests cannot tell it from its input, it is promoted only if its F1 is higher. The
decision is in each comparison and in `promoted.json` (the adapter the ladder ends with).

Choosing among adapters by their eval scores would let the eval split pick the winner it then reports. So
when `--with` adds stages, the ladder holds out the train side's dev split (`hopsmith.data.split`: about a
quarter of the train questions, whole components, sharing no fact with the rest): traces, RFT samples and
preference pairs come from the `fit` split only, and the guard decides each stage after SFT on its paired
run on the dev questions (`dev-sft/`, `dev-<stage>/`). The eval split is still run for every stage and
reported, never consulted. `--no-dev` turns this off (the guard then reads the eval split). The last line
printed is the paired verdict of SFT against the base model: better, worse, mixed or indistinguishable.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from hopsmith.config import ConfigError, EvalConfig, update
from hopsmith.data import load_with_pools
from hopsmith.guard import promote, verdict
from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.judge import judge_backend
from hopsmith.leakage import TRAINED_KEYS
from hopsmith.metrics import compare, format_comparison, format_table
from hopsmith.report import try_write_report
from hopsmith.runlock import locked
from hopsmith.traces.hops import hop_traces
from hopsmith.training import select_traces
from stages import evaluate, judge, preference, rft, sft, traces

# The local preset trades recipe size for minutes: few eval questions, few traces, shorter paragraphs.
PRESETS = {
    # Traces are sampled among those that fit 1,536 tokens (with the compact tool specs every 2-hop trace of
    # every type does), so every sampled trace trains and all five types are drawn. `--max-traces` /
    # `--max-length` trade minutes for data.
    # Issue 14 measured on a dev split of the train questions (benchmarks/RECIPES.md): 12 traces x 2 epochs
    # (12 steps) taught the embedded model to repeat one query and break its JSON (invalid calls 14% -> 28%,
    # F1 1.5 -> 0.4 on the eval split); 39 traces x 1 epoch at one trace a step (39 steps, about the same
    # tokens per step-second) took dev tool use 50% -> 100%, invalid calls 17% -> 0%, no final answer
    # 65% -> 0%, supporting recall 18% -> 43%.
    "local": dict(eval_limit=20, train_limit=None, max_traces=40, epochs=1.0, learning_rate=1e-3,
                  max_turns=6, max_new_tokens=96, max_chars=200, top_k=3, max_length=1536, mine_limit=12,
                  max_pairs=16, preference_learning_rate=1e-4, sft_batch_size=1, hop_traces=False, rft_samples=4),
    "full": dict(eval_limit=None, train_limit=None, max_traces=None, epochs=3.0, learning_rate=2e-4,
                 max_turns=20, max_new_tokens=512, max_chars=None, top_k=5, max_length=4096, mine_limit=None,
                 max_pairs=None, preference_learning_rate=None, sft_batch_size=2, hop_traces=False, rft_samples=4),
}


@dataclass(frozen=True)
class PipelineConfig:
    """`hopsmith pipeline`: the ladder; a knob named as one of `hopsmith eval`'s means what it means there."""

    data: str = "musique"  # bundled set the ladder trains (train split) and evaluates (eval split) on
    model: str = "embedded"  # the base model: embedded, a model directory or a hub id
    preset: str = "local"  # local | full; keys below left unset take the preset's value
    eval_limit: int | None = None  # questions each eval runs
    train_limit: int | None = None  # train questions the traces are written for
    max_traces: int | None = None  # SFT on at most this many kept traces (sampled evenly over types)
    judge: str | None = None  # backend spec for the LLM judge; rules only when unset
    sft_preset: str = "seed000"  # the LoRA settings: seed000 (the LoRA multi-hop recipe) | seed002 (the enterprise one)
    epochs: float | None = None  # SFT passes over the traces
    learning_rate: float | None = None  # SFT's peak learning rate
    max_length: int | None = None  # tokens of the longest trace SFT trains on (longer ones are not sampled)
    max_turns: int | None = None
    max_new_tokens: int | None = None
    max_chars: int | None = None
    top_k: int | None = None
    thinking: bool = False
    batch_size: int = 16
    seed: int = 0
    with_stages: str = ""  # comma-separated stages after SFT, run in the order rft, simpo
    mine_limit: int | None = None  # pair_chosen=traces: train questions the adapter is run on (greedy) for its failures
    # The preference pairs' chosen side: policy (the policy's own correct samples on a train question against
    # its failed samples of the same question: on-policy) | traces (the kept synthetic or teacher traces
    # against its greedy failures)
    pair_chosen: str = "policy"
    rft_samples: int | None = None  # episodes sampled per train question (RFT, and the on-policy pairs)
    rft_temperature: float = 0.8  # their sampling temperature
    rft_limit: int | None = None  # train questions sampled; None: every train question the traces used
    max_pairs: int | None = None  # preference pairs SimPO trains on at most
    sft_batch_size: int | None = None  # traces per optimizer step
    hop_traces: bool | None = None  # add a single-hop reading trace per gold hop (hopsmith.traces.hops)
    preference_preset: str = "seed002"  # seed002 (SimPO) | dpo
    # None: the preference preset's own (seed 002: 5e-7). Seed 002 sets it "10x lower than SFT"; the local
    # preset's SFT runs at 1e-3 on a few dozen steps, where 5e-7 would leave the adapter unchanged, so it uses 1e-4.
    preference_learning_rate: float | None = None
    # Hold out the dev split and let the guard decide the stages after SFT on it (see the module docstring);
    # None: on exactly when --with adds stages.
    dev: bool | None = None
    dev_limit: int | None = None  # dev questions each of the guard's runs takes (None: every one)

    def resolved(self) -> "PipelineConfig":
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown pipeline preset {self.preset!r}; known: {', '.join(PRESETS)}")
        unknown = set(self.stages()) - set(AFTER_SFT)
        if unknown:
            raise ConfigError(f"unknown --with stage(s) {', '.join(sorted(unknown))}; known: {', '.join(AFTER_SFT)}")
        if self.pair_chosen not in ("policy", "traces"):
            raise ConfigError(f"unknown --pair-chosen {self.pair_chosen!r}; known: policy, traces")
        if not 0 < self.rft_temperature <= 2:
            raise ConfigError(f"--rft-temperature must be in (0, 2], got {self.rft_temperature}")
        preset = PRESETS[self.preset]
        out = replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})
        return out if out.dev is not None else replace(out, dev=bool(out.stages()))

    def stages(self) -> list[str]:
        """The stages after SFT that `--with` asks for, in the ladder's order (rft before simpo)."""
        asked = [s.strip() for s in self.with_stages.split(",") if s.strip()]
        return sorted(asked, key=lambda s: AFTER_SFT.index(s) if s in AFTER_SFT else len(AFTER_SFT))


# The stages `--with` adds after SFT, in the order they run: each continues the adapter the ladder kept.
AFTER_SFT = ("rft", "simpo")


# -- the ladder: one step list, run here in one process and in the cloud sharded over containers ---------

@dataclass(frozen=True)
class Step:
    name: str  # the step's directory (eval runs) and its name in logs and the cloud's ledger
    label: str  # what the log says when it starts


# The ladder, in order. `run` below walks it in this process; `stages.cloud.run_ladder` walks the same list
# with each step fanned out over containers. Both build every step's settings with the functions below, so
# the local and the cloud ladders cannot run different recipes. The evals come last: the cloud's budget
# guard then refuses the first stage (traces) before anything is spent.
LADDER = (Step("traces", "traces from the train split"), Step("judge", "judge"),
          Step("select", "the traces that train"), Step("sft", "LoRA SFT"), Step("eval-base", "base model eval"),
          Step("eval-sft", "tuned eval"))


def train_split(cfg) -> str:
    """What the ladder trains on: the train split, less the dev split when that one chooses the adapters."""
    return "fit" if getattr(cfg, "dev", False) else "train"


def traces_settings(cfg) -> dict:
    """The traces step's TracesConfig keys, from a ladder config (PipelineConfig or stages.cloud.CloudConfig)."""
    return {"data": cfg.data, "split": train_split(cfg), "limit": cfg.train_limit, "top_k": cfg.top_k,
            "max_chars": cfg.max_chars, "seed": cfg.seed, "teacher": getattr(cfg, "teacher", None)}


def judge_settings(cfg) -> dict:
    return {"judge": cfg.judge, "seed": cfg.seed}


def select_settings(cfg) -> dict:
    return {"max_traces": cfg.max_traces, "seed": cfg.seed, "model": cfg.model, "max_length": cfg.max_length}


def sft_settings(cfg) -> dict:
    out = {"model": cfg.model, "preset": cfg.sft_preset, "epochs": cfg.epochs, "max_length": cfg.max_length,
           "seed": cfg.seed}
    if getattr(cfg, "sft_batch_size", None) is not None:  # the local preset trains one trace a step
        out["batch_size"] = cfg.sft_batch_size
    return out


def eval_settings(cfg, adapter: str | None = None) -> dict:
    """An eval step's EvalConfig keys; the base model sees the worked example, an adapter (trained without
    it) does not."""
    return {"data": cfg.data, "split": "eval", "limit": cfg.eval_limit, "model": cfg.model, "adapter": adapter,
            "max_turns": cfg.max_turns, "max_new_tokens": cfg.max_new_tokens, "top_k": cfg.top_k,
            "max_chars": cfg.max_chars, "few_shot": adapter is None, "seed": cfg.seed}


def eval_config(cfg: PipelineConfig, *, adapter: str | None = None) -> EvalConfig:
    """The local ladder's eval: the shared settings, its batch size and thinking, and the standalone
    extraction benchmark (the ceiling) with the base eval only, to keep the local ladder within minutes."""
    return update(EvalConfig(), **eval_settings(cfg, adapter), batch_size=cfg.batch_size, thinking=cfg.thinking,
                  extraction_bench=adapter is None)


@locked
def run(cfg: PipelineConfig, root: str | Path, *, log=print) -> dict:
    """Walk the ladder in this process (every stage resumes, so a rerun continues where it stopped), then the
    comparison, `--with simpo`'s steps, and the report."""
    cfg = cfg.resolved()
    # A judge that cannot be used fails now, not after the base eval and the traces.
    judge_model = judge_backend(cfg.judge) if cfg.judge else None
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "pipeline.json", {"kind": "PipelineConfig", **cfg.__dict__})
    local = LocalSteps(cfg, root, judge_model, log)
    done: dict = {}
    for k, step in enumerate(LADDER, 1):
        log(f"[{k}/{len(LADDER)}] {step.label}")
        done[step.name] = getattr(local, step.name.replace("-", "_"))()
    base, tuned = done["eval-base"], done["eval-sft"]
    kept = guarded_comparison(root, {"name": "base", "adapter": None, "metrics": base}, "sft", str(root / "sft"),
                              tuned, root / "comparison.txt", log)
    v = kept["promotion"]["verdict"]
    result = {"base": base, "sft": tuned, "comparison": compare(base, tuned), "traces": done["traces"],
              "judge": done["judge"], "sft_training": done["sft"], "verdict": v,
              "promotions": [kept["promotion"]], "promoted": {k: kept[k] for k in ("name", "adapter")}}
    write_json(root / "comparison.json", result)
    for name, record, now in after_sft(cfg, root, kept, log, steps_before=len(LADDER)):
        result[name] = record
        if now is not kept:
            kept = now
            result["promotions"].append(kept["promotion"])
            result["promoted"] = {k: kept[k] for k in ("name", "adapter")}
        write_json(root / "comparison.json", result)
    report = try_write_report([root])
    if report:
        log(f"report: {report}")
    if result["promoted"]["name"] != "sft":
        log(f"the ladder keeps {result['promoted']['name']} ({result['promoted']['adapter'] or 'no adapter'}); "
            + verdict(base, kept["metrics"], ("base", kept["name"]))["line"])
    log(v["line"])  # last: the one line that says whether training helped
    return result


class LocalSteps:
    """Each ladder step in this process, as `run` calls them (by the step's name)."""

    def __init__(self, cfg: PipelineConfig, root: Path, judge_model, log):
        self.cfg, self.root, self.judge_model, self.log = cfg, root, judge_model, log

    def eval_base(self) -> dict:
        metrics = evaluate.run(eval_config(self.cfg), self.root / "eval-base")
        self.log(format_table(metrics))
        return metrics

    def traces(self) -> dict:
        # traces think exactly when the evaluated agent does
        summary = traces.run(update(traces.TracesConfig(), **traces_settings(self.cfg),
                                    thinking_fraction=1.0 if self.cfg.thinking else 0.0), self.root)
        self.log(f"      {summary['traces']} traces {summary['by_type']}, {summary['skipped']['count']} "
                 "type/question pairs skipped (details in traces/summary-0.json)")
        return summary

    def judge(self) -> dict:
        return judge.run(update(judge.JudgeConfig(), **judge_settings(self.cfg)), self.root, backend=self.judge_model)

    def select(self) -> dict:
        kept = read_jsonl(self.root / "kept.jsonl")
        if self.cfg.hop_traces:
            kept += reading_traces(self.cfg, self.root)
        s = select_settings(self.cfg)
        train, tokens, left_out = select_traces(kept, model=s["model"], max_length=s["max_length"],
                                                max_traces=s["max_traces"], seed=s["seed"])
        write_jsonl(self.root / "train.jsonl", train)
        types = sorted({t.get("source", "?").split(":")[-1] for t in train})
        self.log(f"      kept {len(kept)} traces, {left_out} longer than {self.cfg.max_length} tokens; training on "
                 f"{len(train)} ({', '.join(types)})")
        return {"traces": len(train), "tokens": tokens, "given": len(kept), "left_out": left_out}

    def sft(self) -> dict:
        summary = sft.run(update(sft.SFTConfig(), **sft_settings(self.cfg), traces=str(self.root / "train.jsonl"),
                                 learning_rate=self.cfg.learning_rate), self.root / "sft")
        self.log(f"      {summary['steps']} steps on {summary['traces']} traces ({summary['too_long_dropped']} too "
                 f"long), mean loss {summary['train_loss']:.3f}, {summary['seconds']:.0f} s")
        return summary

    def eval_sft(self) -> dict:
        return evaluate.run(eval_config(self.cfg, adapter=str(self.root / "sft")), self.root / "eval-sft")


def reading_traces(cfg: PipelineConfig, root: Path) -> list[dict]:
    """Single-hop reading traces of the train questions (`hopsmith.traces.hops`), in the traces' env, written
    to `root/hops.jsonl` once and read back on a rerun."""
    path = root / "hops.jsonl"
    if not path.exists():
        questions, pools = load_with_pools(cfg.data, split=train_split(cfg), limit=cfg.train_limit)
        write_jsonl(path, hop_traces(questions, pools, top_k=cfg.top_k, max_chars=cfg.max_chars)[0])
    return read_jsonl(path)


def guarded_stage(root: Path, kept: dict, name: str, adapter: str, metrics: dict, dev: dict | None = None) -> dict:
    """The collapse guard after a ladder stage: the stage's adapter replaces the kept one unless its tool use
    fell or its invalid calls rose beyond the paired 95% CI against it, the paired tests find it worse, or
    (after SFT) they cannot tell and its F1 is not higher (`hopsmith.guard.promote`). With `dev` (the stage's
    run on the dev split) the decision reads it and the kept adapter's `dev` run, not the eval metrics.
    Returns the adapter now kept ({"name", "adapter", "metrics", "dev", "promotion"}) and records it in
    `root/promoted.json`."""
    if dev is not None:
        decision = promote(kept["name"], kept["dev"], name, dev, must_earn=kept["adapter"] is not None,
                           on=f"the dev split ({dev['n']} held-out train questions)")
    else:
        decision = promote(kept["name"], kept["metrics"], name, metrics, must_earn=kept["adapter"] is not None)
    now = ({"name": name, "adapter": adapter, "metrics": metrics, "dev": dev} if decision["kept"] == name
           else dict(kept))
    now["promotion"] = {k: v for k, v in decision.items() if k not in ("tool_use", "invalid_calls")}
    write_json(root / "promoted.json", {"name": now["name"], "adapter": now["adapter"], "decision": now["promotion"]})
    return now


def guarded_comparison(root: Path, kept: dict, name: str, adapter: str, metrics: dict, path: Path, log,
                       dev: dict | None = None) -> dict:
    """The paired comparison table of a stage against the kept adapter, then the guard's decision and the
    verdict, logged and written to `path`; returns the adapter now kept (as `guarded_stage`). With `dev`
    the guard decides on the dev runs, and the eval split's own verdict follows, as a report."""
    now = guarded_stage(root, kept, name, adapter, metrics, dev)
    lines = [format_comparison(kept["metrics"], metrics, names=(kept["name"], name)), now["promotion"]["line"]]
    if dev is None:
        lines.append(now["promotion"]["verdict"]["line"])
    else:
        lines += [f"dev split: {now['promotion']['verdict']['line']}",
                  "eval split (reported, not used to choose): "
                  + verdict(kept["metrics"], metrics, (kept["name"], name))["line"]]
    text = "\n".join(lines)
    path.write_text(text + "\n")
    log(text)
    return now


def rft_config(cfg: PipelineConfig, adapter: str | None) -> rft.RFTConfig:
    """The policy's samples on train questions: the eval's env and episode settings, at `rft_temperature`, and
    RFT's SFT with the ladder's SFT settings (one epoch at one trace a step in the local preset)."""
    agent = {k: v for k, v in eval_settings(cfg, adapter).items() if k in ("model", "adapter", "max_turns",
                                                                          "max_new_tokens", "top_k", "max_chars")}
    return update(rft.RFTConfig(), **agent, data=cfg.data, split=train_split(cfg), limit=cfg.rft_limit or cfg.train_limit,
                  samples=cfg.rft_samples, temperature=cfg.rft_temperature, few_shot=adapter is None,
                  batch_size=cfg.batch_size, epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                  max_length=cfg.max_length, sft_batch_size=cfg.sft_batch_size or 2, seed=cfg.seed)


def rft_dir(root: Path, policy: str) -> Path:
    """Where a policy's samples on train questions (and an RFT of it) live: `rft/` for SFT's, else
    `rft-<policy>/`; RFT and the on-policy pairs of the same policy share them."""
    return root / "rft" if policy == "sft" else root / f"rft-{policy}"


def policy_samples(cfg: PipelineConfig, root: Path, kept: dict) -> Path:
    """The kept policy's samples on train questions, sampled once (or by RFT of the same policy) and read back."""
    folder = rft_dir(root, kept["name"])
    rft.sample(rft_config(cfg, kept["adapter"]), folder)
    return folder / "samples.jsonl"


def after_sft(cfg: PipelineConfig, root: Path, kept: dict, log, *, steps_before: int = 0):
    """The `--with` stages in order (rft, simpo), each continuing the adapter kept so far; yields (name, its
    record, the adapter kept after it). `hopsmith pipeline` and `benchmarks/learning_gain.py` both walk this."""
    stages = cfg.stages()
    if cfg.dev and stages and kept["adapter"] is not None and kept.get("dev") is None:
        log(f"      the kept adapter ({kept['name']}) on the dev split, where the guard decides the stages after it")
        kept = {**kept, "dev": evaluate.run(dev_config(cfg, kept["adapter"]), root / f"dev-{kept['name']}")}
    for i, name in enumerate(stages):
        log(f"[{steps_before + i + 1}/{steps_before + len(stages)}] {name} on {kept['name']}")
        record = (_rft if name == "rft" else _simpo)(cfg, root, kept, log)
        kept = record.pop("kept", kept)
        yield name, record, kept


def dev_config(cfg: PipelineConfig, adapter: str) -> EvalConfig:
    """An adapter's run on the dev split (`dev_limit` questions, or every one), the eval's agent settings."""
    return replace(eval_config(cfg, adapter=adapter), split="dev", limit=cfg.dev_limit, extraction_bench=False)


def _compare_stage(cfg: PipelineConfig, root: Path, kept: dict, name: str, adapter: str, log) -> dict:
    """Eval the stage's adapter (and, with the dev split on, run it there too), compare it with the kept one
    (paired), run the collapse guard, and write `comparison-<name>.txt`; returns the stage's record with the
    adapter now kept under "kept"."""
    metrics = evaluate.run(eval_config(cfg, adapter=adapter), root / f"eval-{name}")
    dev = evaluate.run(dev_config(cfg, adapter), root / f"dev-{name}") if cfg.dev else None
    now = guarded_comparison(root, kept, name, adapter, metrics, root / f"comparison-{name}.txt", log, dev=dev)
    v = now["promotion"]["verdict"]
    out = {"against": kept["name"], kept["name"]: kept["metrics"], name: metrics,
           "comparison": compare(kept["metrics"], metrics),
           "verdict": v, "promotion": now["promotion"],
           "kept": now}
    if dev is not None:
        out["dev"] = {kept["name"]: kept["dev"], name: dev}
    return out


def _rft(cfg: PipelineConfig, root: Path, kept: dict, log) -> dict:
    """Rejection fine-tuning on the kept adapter: `rft_samples` episodes per train question at temperature,
    the correct ones that searched train it further; then eval, comparison and the collapse guard."""
    log(f"      {cfg.rft_samples} samples per train question at temperature {cfg.rft_temperature}")
    folder = rft_dir(root, kept["name"])
    summary = rft.run(rft_config(cfg, kept["adapter"]), folder)
    log(f"      kept {summary['kept']} of {summary['samples']} samples, on {summary['questions_with_a_kept_sample']} "
        f"of {summary['questions']} questions")
    record = {"samples": {k: summary[k] for k in ("samples", "kept", "questions", "questions_with_a_kept_sample")}}
    if not summary["trained"]:
        log("      no sample was correct and searched: nothing to train on; RFT skipped")
        return {**record, "skipped": True}
    out = _compare_stage(cfg, root, kept, "rft", str(folder / "adapter"), log)
    write_json(root / "comparison-rft.json", {**record, **{k: v for k, v in out.items() if k != "kept"}})
    return {**record, **out}


def _pairs(cfg: PipelineConfig, root: Path, kept: dict) -> dict:
    """The preference pairs: on-policy (the kept policy's correct samples against its failed samples of the same
    question) or, with pair_chosen=traces, its greedy failures against the kept synthetic traces."""
    if cfg.pair_chosen == "policy":
        samples = policy_samples(cfg, root, kept)
        chosen = root / "pairs" / "chosen.jsonl"
        write_jsonl(chosen, [r for r in read_jsonl(samples) if r["kept"]])
        results = samples
    else:
        mine_cfg = replace(eval_config(cfg, adapter=kept["adapter"]), split=train_split(cfg), limit=cfg.mine_limit,
                           allow_leakage=True, extraction_bench=False)  # its training questions, on purpose
        evaluate.run(mine_cfg, root / "mine")
        results, chosen = root / "mine" / "results.jsonl", root / "kept.jsonl"
    return preference.mine(preference.MineConfig(results=str(results), chosen=str(chosen), max_pairs=cfg.max_pairs,
                                                 seed=cfg.seed), root / "pairs")


def _simpo(cfg: PipelineConfig, root: Path, kept: dict, log) -> dict:
    """The kept adapter's own failures as pairs -> SimPO (or DPO) continuing it -> eval, compared with it."""
    if kept["adapter"] is None:
        why = "the ladder kept the base model (SFT was not promoted), and preference training continues an adapter"
        log(f"      {cfg.preference_preset} skipped: {why}")
        return {"skipped": True, "why": why}
    log(f"      mining its own failures on train questions (chosen side: {cfg.pair_chosen})")
    pairs = _pairs(cfg, root, kept)
    log(f"      {pairs['pairs']} pairs {pairs['counts']} (skipped {pairs['skipped']})")
    if not pairs["pairs"]:
        hint = ("no correct sample to pair a failure with (`--pair-chosen traces` pairs them with the kept traces)"
                if cfg.pair_chosen == "policy" else "every mined episode was correct or had no correct trace")
        log(f"      no pairs: {hint}; {cfg.preference_preset} skipped")
        return {"pairs": pairs, "skipped": True}
    log(f"      {cfg.preference_preset} preference training, continuing {kept['name']}")
    p_summary = preference.train(preference.PreferenceConfig(
        pairs=str(root / "pairs" / "pairs.jsonl"), adapter=kept["adapter"], model=cfg.model,
        preset=cfg.preference_preset, learning_rate=cfg.preference_learning_rate, max_length=cfg.max_length,
        probe_data=cfg.data, probe_every=5, seed=cfg.seed), root / "simpo")  # probes: stop on collapse mid-run
    b, a = p_summary["behaviour_before"], p_summary["behaviour_after"]
    log(f"      {p_summary['steps']} steps; tool use {b['tool_use_rate']:.0%} -> {a['tool_use_rate']:.0%}, "
        f"query diversity {b['query_diversity']:.2f} -> {a['query_diversity']:.2f}"
        + (f"; COLLAPSE: {p_summary['collapse']}" if p_summary["collapse"] else ""))
    out = _compare_stage(cfg, root, kept, "simpo", str(root / "simpo"), log)
    record = {"pairs": pairs, "pair_chosen": cfg.pair_chosen,
              "training": {k: v for k, v in p_summary.items() if k not in TRAINED_KEYS}}
    write_json(root / "comparison-simpo.json", {**record, **{k: v for k, v in out.items() if k != "kept"}})
    return {**record, **out}
