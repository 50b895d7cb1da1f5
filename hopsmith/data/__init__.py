"""Questions and paragraph pools: load the multi-hop QA sets into `Question` records and build the
collections each question is searched over.

    from hopsmith.data import load_questions, build_pools
    questions = load_questions("musique", split="eval")
    pools = build_pools(questions, size=400)   # question id -> ~400 paragraphs
"""
from hopsmith.data.loaders import BUNDLED, SPLITS, DataError, hop_question, load_questions
from hopsmith.data.pools import build_pools, corpus_pools, load_corpus, load_with_pools, pool_key
from hopsmith.data.split import assign_splits, single_hop_ids, split_of

__all__ = [
    "BUNDLED",
    "SPLITS",
    "DataError",
    "assign_splits",
    "build_pools",
    "corpus_pools",
    "hop_question",
    "load_corpus",
    "load_with_pools",
    "load_questions",
    "pool_key",
    "single_hop_ids",
    "split_of",
]
