"""Rejection fine-tuning: sampled episodes are filtered by the rules and must-search, then trained on."""
import pytest
from conftest import ScriptedBackend, call

from hopsmith.config import ConfigError
from hopsmith.data import hop_question, load_questions
from hopsmith.io import read_jsonl
from stages import rft


def test_rft_keeps_correct_searched_samples_and_trains(tiny_dir, tmp_path):
    qs = load_questions("musique", split="train", limit=3)
    good, lucky, wrong = qs
    scripts = {
        good.question: [call("search", query=hop_question(good, 0)), f"FINAL({good.answer})"],
        lucky.question: [f"FINAL({lucky.answer})"],  # right, but never searched: seed 001's ASP rejects it
        wrong.question: [call("search", query="x"), "FINAL(nothing)"],
    }
    cfg = rft.RFTConfig(data="musique", model=str(tiny_dir), limit=3, samples=2, max_turns=3, epochs=1.0,
                        max_length=8192)
    summary = rft.run(cfg, tmp_path, backend=ScriptedBackend(scripts))
    rows = read_jsonl(tmp_path / "samples.jsonl")
    assert len(rows) == 6 and {r["sample"] for r in rows} == {0, 1}
    kept = read_jsonl(tmp_path / "kept.jsonl")
    assert {r["question_id"] for r in kept} == {good.id} and len(kept) == 2
    assert summary["trained"] and (tmp_path / "adapter" / "adapter_config.json").exists()
    assert summary["behaviour"]["answered_without_search_rate"] == pytest.approx(1 / 3)
    # a rerun resumes: nothing is sampled again
    backend = ScriptedBackend(scripts)
    rft.run(cfg, tmp_path, backend=backend)
    assert backend.batches == []


def test_rft_continues_the_sampled_adapter(tiny_dir, tmp_path):
    """Seed 001's RFT is a last stage on the distilled model: round 2 trains round 1's adapter further
    (same LoRA weights at the start), and its record of trained questions includes round 1's."""
    from safetensors.torch import load_file

    qs = load_questions("musique", split="train", limit=2)
    first = {q.question: [call("search", query=hop_question(q, 0)), f"FINAL({q.answer})"] for q in qs[:1]}
    cfg = rft.RFTConfig(data="musique", model=str(tiny_dir), limit=1, samples=1, max_turns=3, epochs=1.0,
                        max_length=8192)
    rft.run(cfg, tmp_path / "r1", backend=ScriptedBackend(first))
    second = {q.question: [call("search", query=hop_question(q, 0)), f"FINAL({q.answer})"] for q in qs}
    cfg2 = rft.RFTConfig(data="musique", model=str(tiny_dir), adapter=str(tmp_path / "r1" / "adapter"), limit=2,
                         samples=1, max_turns=3, epochs=1.0, max_length=8192, learning_rate=1e-12)
    rft.run(cfg2, tmp_path / "r2", backend=ScriptedBackend(second))
    w1 = load_file(tmp_path / "r1" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "r2" / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    # lr 1e-12: round 2 ends where round 1 did; a fresh adapter would have new random A and zero B.
    assert all((w1[k] - w2[k]).abs().max() < 1e-6 for k in w1)
    assert any(w1[k].abs().max() > 0 for k in w1 if "lora_B" in k)
    import json

    ids = json.loads((tmp_path / "r2" / "adapter" / "training.json").read_text())["trained_question_ids"]
    assert set(ids) == {q.id for q in qs}


def test_rft_config_errors():
    with pytest.raises(ConfigError, match="temperature"):
        rft.RFTConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="samples"):
        rft.RFTConfig(samples=0)


def test_rft_refuses_to_resume_samples_of_another_sampler(tiny_dir, tmp_path):
    """Samples at another temperature (or of another policy) would be mixed into the same samples.jsonl:
    the rerun is refused before anything is sampled or overwritten; more samples or questions resume."""
    from hopsmith.config import RunDirError

    q = load_questions("musique", split="train", limit=1)[0]
    scripts = {q.question: [call("search", query=hop_question(q, 0)), f"FINAL({q.answer})"]}
    cfg = rft.RFTConfig(data="musique", model=str(tiny_dir), limit=1, samples=1, max_turns=3)
    rft.sample(cfg, tmp_path, backend=ScriptedBackend(scripts))
    saved = (tmp_path / "config.json").read_text()
    backend = ScriptedBackend(scripts)
    with pytest.raises(RunDirError, match=r"temperature: 0\.8 -> 1\.1"):
        rft.sample(rft.RFTConfig(data="musique", model=str(tiny_dir), limit=1, samples=2, max_turns=3,
                                 temperature=1.1), tmp_path, backend=backend)
    assert backend.batches == [] and (tmp_path / "config.json").read_text() == saved
    rows = rft.sample(rft.RFTConfig(data="musique", model=str(tiny_dir), limit=1, samples=2, max_turns=3,
                                    epochs=1.0), tmp_path, backend=backend)
    assert sorted(r["sample"] for r in rows) == [0, 1] and len(backend.batches) > 0
