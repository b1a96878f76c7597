"""Shared fixtures: offline by construction, tiny random models built from a config, the CLI in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import csv  # noqa: E402
import random  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ROBERTA_TOKENIZER = SHARED / "roberta-base-tokenizer"
AG_NEWS = SHARED / "ag_news" / "train_union.csv"
FEW_NERD = SHARED / "few_nerd"


@dataclass
class CliResult:
    code: int
    output: str
    exception: BaseException | None


def run_cli(*args: object) -> CliResult:
    """Run `lorafit ARGS` in-process the way `main()` does: user errors exit 2 with one line."""
    from typer.testing import CliRunner

    from lorafit.cli import app
    from lorafit.errors import LorafitError

    result = CliRunner().invoke(app, [str(a) for a in args])
    exc = result.exception
    if isinstance(exc, LorafitError):
        return CliResult(2, result.output + f"error: {exc}\n", exc)
    if exc is not None and not isinstance(exc, SystemExit):
        raise exc
    return CliResult(result.exit_code, result.output, exc)


@pytest.fixture
def cli():
    return run_cli


def _save_tiny(folder: Path, model_type: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    if model_type == "roberta":
        from transformers import RobertaTokenizerFast

        # (transformers 5: RobertaTokenizerFast(vocab_file=..., merges_file=...) silently builds an EMPTY
        # vocabulary; from_pretrained on the folder reads the files correctly)
        tok = RobertaTokenizerFast.from_pretrained(ROBERTA_TOKENIZER)
        assert len(tok(["match goal team"])["input_ids"][0]) == 5
        cfg = AutoConfig.for_model("roberta", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                                   type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                                   initializer_range=0.2,
                                   eos_token_id=2)
        tok.model_max_length = 128
    else:
        from transformers import AutoTokenizer

        from lorafit.demo import minilm_path

        tok = AutoTokenizer.from_pretrained(minilm_path())
        cfg = AutoConfig.for_model("bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                   initializer_range=0.2)
        tok.model_max_length = 128
    model = AutoModel.from_config(cfg)  # a base encoder checkpoint: the task head will be new
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random RoBERTa with the real roberta-base tokenizer (no pooler in the checkpoint)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer random BERT with the MiniLM WordPiece tokenizer; its checkpoint has a pooler."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert"), "bert")


TOPICS = {
    "sports": ["match", "goal", "team", "coach", "season", "league", "striker", "tennis", "final", "cup"],
    "business": ["market", "shares", "profit", "bank", "merger", "economy", "investors", "stocks", "sales", "oil"],
    "science": ["research", "space", "software", "chip", "planet", "study", "computer", "robot", "genome", "data"],
}


def make_rows(n: int, seed: int = 0, labels: dict[str, object] | None = None) -> list[tuple[str, object]]:
    """Synthetic, learnable rows: each text mixes topic words with filler, lengths vary (3..40 words)."""
    rng = random.Random(seed)
    names = list(TOPICS)
    filler = ["the", "a", "of", "in", "on", "after", "said", "today", "new", "report", "week", "big"]
    rows = []
    for i in range(n):
        topic = names[i % len(names)]
        k = rng.randint(3, 40)
        words = [rng.choice(TOPICS[topic]) if rng.random() < 0.5 else rng.choice(filler) for _ in range(k)]
        words[0] = rng.choice(TOPICS[topic])
        rows.append((" ".join(words), labels[topic] if labels else topic))
    return rows


def write_csv(path: Path, rows: list[tuple[str, object]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cls-data")
    return {
        "train": write_csv(d / "train.csv", make_rows(240, 1)),
        "test": write_csv(d / "test.csv", make_rows(60, 2)),
        "dir": d,
    }


# lr 1e-2: at 2e-2 this 2-layer model stalled near chance (0.5) for some seeds (42 among them) with either dropout
# mask stream, while 1e-2 learns (0.78-0.90 on seeds 42-47)
FAST = ["--epochs", "8", "--lr", "1e-2", "--batch-size", "16", "--precision", "fp32", "--set",
        "training.logging_steps=5"]


@pytest.fixture(scope="session")
def cls_run(tmp_path_factory, tiny_roberta, cls_data) -> Path:
    """One trained tiny classification run shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "cls"
    res = run_cli("train", "--model", tiny_roberta, "--train-file", cls_data["train"], "--test-file",
                  cls_data["test"], "--output-dir", out, *FAST)
    assert res.code == 0, res.output
    return out


def ag_news_rows(n_train: int, n_test: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Disjoint real AG News rows (text, label 1-4) from the shared data folder."""
    if not AG_NEWS.is_file():
        pytest.skip(f"shared data not found: {AG_NEWS}")
    with AG_NEWS.open(newline="", encoding="utf-8") as fh:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(fh) if r["text"].strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train : n_train + n_test]


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory) -> Path:
    """ONE real run per session: lorafit with its defaults (no hyper-parameter flags, precision auto) on the
    MiniLM package and 3,000 real AG News rows, with 1,000 held-out rows of the same file as its test split."""
    from lorafit.demo import minilm_path

    d = tmp_path_factory.mktemp("minilm")
    train, test = ag_news_rows(3000, 1000)
    train_f = write_csv(d / "train.csv", train)
    test_f = write_csv(d / "test.csv", test)
    out = d / "run"
    res = run_cli("train", "--model", minilm_path(), "--train-file", train_f, "--test-file", test_f,
                  "--output-dir", out)
    assert res.code == 0, res.output
    return out
