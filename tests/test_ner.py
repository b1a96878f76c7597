"""NER (issue 3): data, tag schemes, alignment, windowing, word-level metrics, prediction with offsets, merge.

Offline on tiny random models (conftest); one slow real-data test on MiniLM with Few-NERD sentences, compared with
a plain Trainer + PEFT reference written here.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import FEW_NERD, ROBERTA_TOKENIZER, run_cli
from lorafit.errors import LorafitError

# ---- synthetic Few-NERD-style data (IO tags with coarse-fine types) ----------------------------------------------
ENT = {
    "person-politician": [["Angela", "Merkel"], ["Obama"], ["Macron"], ["Justin", "Trudeau"], ["Modi"]],
    "person-actor": [["Meryl", "Streep"], ["Hanks"], ["DiCaprio"]],
    "location-GPE": [["Paris"], ["Berlin"], ["Tokyo"], ["Lagos"], ["New", "York"]],
    "organization-company": [["Siemens"], ["Toyota"], ["Nokia"], ["Koch", "Records"]],
}
TEMPLATES = [["{person-politician}", "visited", "{location-GPE}", "on", "Monday", "."],
             ["{person-actor}", "starred", "in", "a", "film", "shot", "in", "{location-GPE}", "."],
             ["{organization-company}", "opened", "an", "office", "in", "{location-GPE}", "."],
             ["In", "{location-GPE}", ",", "{person-politician}", "met", "{person-actor}", "."]]
FILLER = ["the", "a", "report", "said", "today", "later", "and", "new", "big", "week"]


def sentences(n: int, seed: int, long_every: int = 0, scheme: str = "IO") -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        toks: list[str] = []
        tags: list[str] = []
        for piece in rng.choice(TEMPLATES):
            if piece.startswith("{"):
                typ = piece[1:-1]
                words = rng.choice(ENT[typ])
                toks += words
                tags += [typ if scheme == "IO" else f"{'B' if k == 0 else 'I'}-{typ}" for k in range(len(words))]
            else:
                toks.append(piece)
                tags.append("O")
        if long_every and i % long_every == 0:
            toks = [rng.choice(FILLER) for _ in range(50)] + toks
            tags = ["O"] * 50 + tags
        out.append((toks, tags))
    return out


def write_conll(path: Path, sents: list[tuple[list[str], list[str]]], docstart: bool = False) -> Path:
    head = "-DOCSTART-\tO\n\n" if docstart else ""
    path.write_text(head + "\n".join("".join(f"{t}\t{g}\n" for t, g in zip(*s, strict=True)) for s in sents),
                    encoding="utf-8")
    return path


def write_jsonl(path: Path, sents: list[tuple[list[str], list[str]]]) -> Path:
    path.write_text("".join(json.dumps({"tokens": t, "tags": g}) + "\n" for t, g in sents), encoding="utf-8")
    return path


NER_FAST = ["--epochs", "4", "--lr", "2e-2", "--batch-size", "8", "--precision", "fp32", "--max-length", "32",
            "--set", "training.save_strategy='no'", "--set", "training.logging_steps=5"]


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ner-data")
    return {
        "train": write_conll(d / "train", sentences(60, 1, long_every=10), docstart=True),  # no extension: sniffed
        "test": write_conll(d / "test.conll", sentences(16, 2, long_every=4)),
        "dir": d,
    }


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, tiny_roberta, ner_files) -> Path:
    out = tmp_path_factory.mktemp("ner-runs") / "io"
    res = run_cli("train", "--model", tiny_roberta, "--train-file", ner_files["train"], "--test-file",
                  ner_files["test"], "--output-dir", out, *NER_FAST)
    assert res.code == 0, res.output
    return out


# ---- pre-tokenizer --------------------------------------------------------------------------------------------------
def test_pretokenize_offsets_point_into_the_original_text():
    from lorafit.ner import pretokenize

    text = "Yesterday  Angela Merkel's team (CDU) paid $3.5 billion\tin Köln, 1997's tour."
    words = pretokenize(text)
    assert all(text[s:e] == w for w, s, e in words)
    got = [w for w, _, _ in words]
    assert got[:5] == ["Yesterday", "Angela", "Merkel", "'s", "team"]
    assert "3.5" in got and "Köln" in got and "(" in got and "." == got[-1]
    assert "".join(got) == "".join(text.split())  # nothing but whitespace is lost


# ---- tag schemes and metrics ----------------------------------------------------------------------------------------
def test_scheme_detection_and_conversion():
    from lorafit.ner_metrics import convert, scheme_of

    assert scheme_of(["O", "person-politician", "location-GPE"]) == "IO"
    assert scheme_of(["O", "B-PER", "I-PER"]) == "BIO"
    assert scheme_of(["O", "B-PER", "E-PER", "S-LOC"]) == "BIOES"
    assert scheme_of(["O"]) is None
    with pytest.raises(ValueError):
        scheme_of(["B-PER", "person"])
    io = ["person-actor", "person-actor", "person-politician", "O", "location-GPE"]
    assert convert(io, "IO", "BIO") == ["B-person-actor", "I-person-actor", "B-person-politician", "O",
                                        "B-location-GPE"]
    assert convert(["B-X", "I-X", "O", "I-Y"], "BIO", "IO") == ["X", "X", "O", "Y"]
    assert convert(["O", "I-X", "I-X", "B-X"], "BIO", "BIO") == ["O", "B-X", "I-X", "B-X"]  # IOB1 repaired
    assert convert(["S-X", "B-Y", "I-Y", "E-Y"], "BIOES", "BIO") == ["B-X", "B-Y", "I-Y", "I-Y"]
    assert convert(["B-X", "B-Y", "I-Y"], "BIO", "BIOES") == ["S-X", "B-Y", "E-Y"]


def test_prefixless_tags_are_never_parsed_as_prefixes():
    """seqeval reads a raw IO tag 'person-politician' as prefix 'p' + type 'olitician'-ish garbage; lorafit reads
    tags through the data's scheme, so the type stays whole."""
    from seqeval.metrics import classification_report

    from lorafit.ner_metrics import ner_metrics, split_tag

    gold = [["person-politician", "person-politician", "O", "location-GPE"]]
    pred = [["person-politician", "person-actor", "O", "location-GPE"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = classification_report(gold, pred, output_dict=True)
    assert "person-politician" not in naive  # the trap: seqeval on raw IO tags
    m = ner_metrics(gold, pred, "IO")
    assert set(m["per_type"]) == {"location-GPE", "person-actor", "person-politician"}
    assert split_tag("person-politician", "IO") == ("I", "person-politician")
    assert split_tag("B-person-politician", "BIO") == ("B", "person-politician")
    assert split_tag("I-beam", "IO") == ("I", "I-beam")  # an IO type that looks prefixed stays a type
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(0.4) and m["io_f1"] == pytest.approx(0.4)
    assert m["token_accuracy"] == pytest.approx(0.75)


def test_strict_and_io_collapsed_scores_on_known_cases():
    from lorafit.ner_metrics import ner_metrics

    # adjacent B-PER B-PER are two entities (strict) but one run (IO); I-LOC after O is no entity in strict mode
    m = ner_metrics([["B-PER", "B-PER", "O", "B-LOC", "I-LOC"]], [["B-PER", "I-PER", "O", "I-LOC", "I-LOC"]], "BIO")
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert (m["io_precision"], m["io_recall"], m["io_f1"]) == (1.0, 1.0, 1.0)
    m = ner_metrics([["B-ORG", "I-ORG", "O", "B-PER"], ["O", "B-LOC"]],
                    [["B-ORG", "I-ORG", "O", "O"], ["B-LOC", "I-LOC"]], "BIO")
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.4) and m["io_f1"] == pytest.approx(0.4)
    assert m["per_type"]["ORG"]["f1"] == 1.0 and m["per_type"]["PER"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0}
    assert m["per_type"]["LOC"]["predicted"] == 1
    m = ner_metrics([["S-PER", "O", "B-LOC", "E-LOC"]], [["S-PER", "O", "B-LOC", "I-LOC"]], "BIOES")
    assert (m["precision"], m["recall"]) == (1.0, 0.5) and m["io_f1"] == 1.0
    assert "IOBES" in m["strict_mode"]


def test_io_strict_equals_io_collapsed_and_the_output_says_so():
    from lorafit.ner_metrics import format_ner_metrics, ner_metrics

    rng = random.Random(3)
    types = ["person-actor", "person-politician", "location-GPE", "O", "O", "O"]
    gold = [[rng.choice(types) for _ in range(12)] for _ in range(40)]
    pred = [[t if rng.random() < 0.7 else rng.choice(types) for t in s] for s in gold]
    m = ner_metrics(gold, pred, "IO")
    assert m["f1"] == pytest.approx(m["io_f1"]) and m["precision"] == pytest.approx(m["io_precision"])
    text = format_ner_metrics(m)
    assert "strict therefore equals the IO-collapsed score" in text and "IOB2 strict" in text


def test_coarse_scores_map_coarse_fine_types_to_coarse():
    from lorafit.ner_metrics import coarse_tag, ner_metrics

    assert coarse_tag("person-politician", "IO") == "person"
    assert coarse_tag("B-event-attack/battle/war/militaryconflict", "BIO") == "B-event"
    gold = [["person-actor", "O", "location-GPE", "O"], ["organization-company", "O"]]
    pred = [["person-director", "O", "location-island", "O"], ["organization-company", "O"]]
    m = ner_metrics(gold, pred, "IO")
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["coarse"]["f1"] == 1.0 and set(m["coarse"]["per_type"]) == {"person", "location", "organization"}
    assert "coarse" not in ner_metrics([["B-PER", "O"]], [["B-PER", "O"]], "BIO")  # no coarse-fine types


# ---- reading data and bad input ---------------------------------------------------------------------------------
def test_conll_reader_sniffs_and_keeps_line_numbers(tmp_path):
    from lorafit.ner_data import read_ner_file, sniff_format

    f = tmp_path / "data"
    f.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n",
                 encoding="utf-8")
    assert sniff_format(f) == "conll"
    split = read_ner_file(f)
    assert split.tokens == [["EU", "rejects"], ["Peter"]] and split.tags == [["B-ORG", "O"], ["B-PER"]]
    assert split.lines == [3, 7]
    assert sniff_format(FEW_NERD / "processed_data_1") == "conll"
    (tmp_path / "c.tsv").write_text("text\tlabel\nsome news text here\tsports\n", encoding="utf-8")
    assert sniff_format(tmp_path / "c.tsv") == "csv"


BAD = {
    "no-label": ("conll", "EU\tB-ORG\nrejects\n", "E501", "line 2"),
    "tab-in-token": ("conll", "EU\tB-ORG\nre\tjects\tO\n", "E501", "line 2"),
    "mixed-schemes": ("conll", "EU\tB-ORG\nrejects\tO\n\nPeter\tperson-actor\n", "E503", "line 4"),
    "empty-sentence": ("jsonl", '{"tokens": ["EU"], "tags": ["B-ORG"]}\n{"tokens": [], "tags": []}\n', "E504",
                       "line 2"),
    "length-mismatch": ("jsonl", '{"tokens": ["EU", "x"], "tags": ["B-ORG"]}\n', "E508", "line 1"),
    "no-entities": ("conll", "EU\tO\nrejects\tO\n", "E506", "has no entities"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_error_with_file_and_line(case, tmp_path, tiny_roberta):
    fmt, text, code, where = BAD[case]
    f = tmp_path / f"train.{'conll' if fmt == 'conll' else 'jsonl'}"
    f.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    res = run_cli("train", "--task", "ner", "--model", tiny_roberta, "--train-file", f, "--output-dir", out)
    assert res.code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: [{code}]") and where in line and str(f) in line
    assert not out.exists()  # nothing half-written


def test_label_sets_must_agree_and_unknown_tags_are_named(tmp_path, tiny_roberta):
    train = write_conll(tmp_path / "train.conll", sentences(10, 1))
    test = tmp_path / "test.conll"
    test.write_text("Paris\tlocation-GPE\n\nMars\tlocation-planet\n", encoding="utf-8")
    res = run_cli("train", "--model", tiny_roberta, "--train-file", train, "--test-file", test, "--output-dir",
                  tmp_path / "r")
    assert res.code == 2 and "[E505]" in res.output and "line 3" in res.output and "location-planet" in res.output
    bio = tmp_path / "bio.conll"
    bio.write_text("Paris\tB-location-GPE\n", encoding="utf-8")
    res = run_cli("train", "--model", tiny_roberta, "--train-file", train, "--test-file", bio, "--output-dir",
                  tmp_path / "r")
    assert res.code == 2 and "[E505]" in res.output and "BIO scheme" in res.output
    res = run_cli("train", "--model", tiny_roberta, "--train-file", train, "--output-dir", tmp_path / "r",
                  "--labels", "O,location-GPE,person-politician,person-actor")
    assert res.code == 2 and "[E502]" in res.output and "organization-company" in res.output
    assert not (tmp_path / "r").exists()


def test_task_detection(tmp_path, ner_files, cls_data, monkeypatch):
    import datasets

    from lorafit.config import DataConfig
    from lorafit.ner import detect_ner

    assert detect_ner(DataConfig(train_file=str(ner_files["train"])))
    assert detect_ner(DataConfig(train_file=str(write_jsonl(tmp_path / "t.jsonl", sentences(3, 0)))))
    assert not detect_ner(DataConfig(train_file=str(cls_data["train"])))
    feats = _fewnerd_features()
    monkeypatch.setattr(datasets, "load_dataset_builder",
                        lambda *a, **k: SimpleNamespace(info=SimpleNamespace(features=feats)))
    assert detect_ner(DataConfig(dataset="DFKI-SLT/few-nerd", dataset_config="supervised"))
    plain = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    monkeypatch.setattr(datasets, "load_dataset_builder",
                        lambda *a, **k: SimpleNamespace(info=SimpleNamespace(features=plain)))
    assert not detect_ner(DataConfig(dataset="ag_news"))


COARSE = ["O", "art", "building", "event", "location", "organization", "other", "person", "product"]
FINE = ["O", "location-GPE", "organization-company", "person-actor", "person-politician", "art-music"]


def _fewnerd_features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=COARSE)),
        "fine_ner_tags": datasets.Sequence(datasets.ClassLabel(names=FINE)),
    })


def _fake_fewnerd(n: int = 40) -> object:
    import datasets

    def split(seed: int, k: int) -> object:
        rows = sentences(k, seed)
        fine = [[FINE.index(t) for t in g] for _, g in rows]
        coarse = [[COARSE.index(t.split("-")[0]) if t != "O" else 0 for t in g] for _, g in rows]
        return datasets.Dataset.from_dict({"id": [str(i) for i in range(k)], "tokens": [t for t, _ in rows],
                                           "ner_tags": coarse, "fine_ner_tags": fine}, features=_fewnerd_features())

    return datasets.DatasetDict({"train": split(1, n), "validation": split(2, 10), "test": split(3, 10)})


def test_hub_dataset_tag_column_chooses_fine_or_coarse(monkeypatch):
    import datasets

    from lorafit.config import DataConfig
    from lorafit.ner_data import load_ner

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _fake_fewnerd())
    fine = load_ner(DataConfig(dataset="DFKI-SLT/few-nerd", dataset_config="supervised", tag_column="fine_ner_tags"))
    assert fine.labels == FINE and fine.scheme == "IO" and fine.tag_column == "fine_ner_tags"
    assert "person-politician" in {t for s in fine.splits["train"].tags for t in s}
    coarse = load_ner(DataConfig(dataset="DFKI-SLT/few-nerd", max_train_samples=20))
    assert coarse.labels == COARSE and coarse.tag_column == "ner_tags" and len(coarse.splits["train"]) == 20


def test_plan_fewnerd_preset_exact_count(cli):
    res = cli("plan", "--preset", "fewnerd-r16")
    assert res.code == 0, res.output
    assert "641,347" in res.output and "124,747,910" in res.output and "67 labels" in res.output


# ---- tokenizer check, alignment, windows ------------------------------------------------------------------------
def test_add_prefix_space_is_verified(tiny_roberta, tiny_bert, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, RobertaTokenizerFast

    from lorafit import modeling
    from lorafit.ner import check_word_alignment

    bad = RobertaTokenizerFast.from_pretrained(ROBERTA_TOKENIZER)  # add_prefix_space=False: silent garbage
    with pytest.raises(LorafitError) as err:
        check_word_alignment(bad, "roberta")
    assert err.value.code == "E507"
    check_word_alignment(RobertaTokenizerFast.from_pretrained(ROBERTA_TOKENIZER, add_prefix_space=True), "ok")
    check_word_alignment(AutoTokenizer.from_pretrained(tiny_bert), "bert")
    monkeypatch.setattr(modeling, "load_tokenizer", lambda path, task, revision=None: AutoTokenizer.from_pretrained(
        path, add_prefix_space=False))
    train = write_conll(tmp_path / "train.conll", sentences(10, 1))
    res = run_cli("train", "--model", tiny_roberta, "--train-file", train, "--output-dir", tmp_path / "r")
    assert res.code == 2 and "[E507]" in res.output and "add_prefix_space=True" in res.output


def test_labels_on_first_subtoken_only_or_all(tiny_roberta):
    from transformers import AutoTokenizer

    from lorafit.ner import encode, inside_map

    tok = AutoTokenizer.from_pretrained(tiny_roberta, add_prefix_space=True)
    words = ["DiCaprio", "Leonardo", "signed", "with", "Koch", "Records"]
    labels = ["O", "B-per", "I-per"]
    ids = [[1, 2, 0, 0, 0, 0]]
    enc = encode(tok, [words], 64, tag_ids=ids)
    (w,) = enc.windows
    n_sub = {i: w.word_ids.count(i) for i in range(len(words))}
    assert n_sub[0] > 1  # "DiCaprio" splits: the test is about sub-tokens
    firsts = [p for p, i in enumerate(w.word_ids) if i is not None and w.word_ids[p - 1] != i]
    assert [w.labels[p] for p in firsts] == ids[0]
    assert all(w.labels[p] == -100 for p in range(len(w.labels)) if p not in firsts)
    all_enc = encode(tok, [words], 64, tag_ids=ids, label_all=True, inside=inside_map(labels, "BIO"))
    dicaprio = [p for p, i in enumerate(all_enc.windows[0].word_ids) if i == 0]
    assert [all_enc.windows[0].labels[p] for p in dicaprio] == [1] + [2] * (len(dicaprio) - 1)  # B- then I-
    assert enc.choice == [[(0, p) for p in firsts]]


def test_long_sentence_is_windowed_and_every_word_scored(tiny_bert):
    from transformers import AutoTokenizer

    from lorafit.ner import encode

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rng = random.Random(0)
    long = [rng.choice(["Koch", "records", "unbelievably", "a", ",", "Tokyo"]) for _ in range(70)]
    enc = encode(tok, [["short", "one"], long], 16, stride=4)
    assert enc.windowed == 1
    wins = [k for k, w in enumerate(enc.windows) if w.sentence == 1]
    assert len(wins) > 3 and all(len(enc.windows[k].input_ids) <= 16 for k in wins)
    assert len(enc.choice[1]) == len(long)
    for word, (k, p) in enumerate(enc.choice[1]):  # the chosen window is where the word is farthest from a cut
        dists = {}
        for kk in wins:
            w = enc.windows[kk]
            content = [q for q, i in enumerate(w.word_ids) if i is not None]
            if word not in w.word_ids:
                continue
            pos = w.word_ids.index(word)
            q = pos - content[0]
            left = q if w.word_ids[content[0]] > 0 else 99
            right = len(content) - 1 - q if w.word_ids[content[-1]] < len(long) - 1 else 99
            dists[kk] = min(left, right)
        assert enc.windows[k].word_ids[p] == word and dists[k] == max(dists.values())
        assert k == min(kk for kk, d in dists.items() if d == dists[k])


# ---- the trained run: folder, evaluate, predict, merge ----------------------------------------------------------
def test_train_writes_the_run_folder(ner_run, ner_files, cli):
    import yaml

    for name in ("config.yaml", "data_stats.json", "params.json", "metrics.json", "history.csv", "train_log.csv",
                 "predictions.jsonl", "samples.json", "lorafit.json", "adapter/adapter_model.safetensors",
                 "adapter/lorafit.json"):
        assert (ner_run / name).is_file(), name
    cfg = yaml.safe_load((ner_run / "config.yaml").read_text())
    assert cfg["task"] == "ner" and cfg["data"]["scheme"] == "io" and cfg["data"]["labels"][0] == "O"
    bundle = json.loads((ner_run / "adapter" / "lorafit.json").read_text())
    assert bundle["scheme"] == "IO" and bundle["pretokenizer"]["function"] == "lorafit.ner.pretokenize"
    assert bundle["labels"] == ["O", "location-GPE", "organization-company", "person-actor", "person-politician"]
    assert bundle["tokenizer"]["add_prefix_space"] is True
    stats = json.loads((ner_run / "data_stats.json").read_text())
    assert stats["splits"]["train"]["windowed_sentences"] > 0 and stats["splits"]["test"]["windowed_sentences"] == 4
    metrics = json.loads((ner_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        m = metrics[split]
        assert {"precision", "recall", "f1", "io_f1", "token_accuracy", "per_type", "coarse"} <= set(m)
    assert metrics["test"]["windowed_sentences"] == 4 and metrics["test"]["words"] == sum(
        len(t) for t, _ in sentences(16, 2, long_every=4))
    header = (ner_run / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["epoch", "step", "train_loss", "eval_loss", "precision", "recall", "f1"]
    assert len((ner_run / "history.csv").read_text().splitlines()) == 5  # one row per epoch
    preds = [json.loads(x) for x in (ner_run / "predictions.jsonl").read_text().splitlines()]
    assert [p["tokens"] for p in preds] == [t for t, _ in sentences(16, 2, long_every=4)]  # dataset order
    assert all(len(p["predicted"]) == len(p["tokens"]) for p in preds)
    assert len(json.loads((ner_run / "samples.json").read_text())["tokens"]) == 6
    assert cli("check", ner_run).code == 0


def test_evaluate_cli_reports_strict_io_coarse(ner_run, ner_files, cli, tmp_path):
    out = tmp_path / "m.json"
    res = cli("evaluate", ner_run, "--data", ner_files["test"], "--output", out)
    assert res.code == 0, res.output
    for text in ("strict", "IO-collapsed", "token accuracy", "coarse", "windowed sentences 4", "IOB2 strict"):
        assert text in res.output
    m = json.loads(out.read_text())
    trained = json.loads((ner_run / "metrics.json").read_text())["test"]
    assert m["f1"] == pytest.approx(trained["f1"]) and m["token_accuracy"] == pytest.approx(trained["token_accuracy"])
    bio = write_jsonl(tmp_path / "bio.jsonl", sentences(8, 5, scheme="BIO"))  # converted to the model's IO
    res = cli("evaluate", ner_run, "--data", bio)
    assert res.code == 0 and "scheme IO" in res.output, res.output
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris\tlocation-GPE\nMars\tlocation-planet\n", encoding="utf-8")
    res = cli("evaluate", ner_run, "--data", bad)
    assert res.code == 2 and "[E502]" in res.output and "line 2" in res.output


def test_entities_carry_character_offsets_into_the_original_text(monkeypatch):
    import lorafit.ner as ner

    labels = ["O", "location-GPE", "person-politician"]
    lexicon = {"Angela": 2, "Merkel": 2, "Paris": 1, "Köln": 1}

    def fake_word_logits(predictor, sentences, batch_size=64):
        return [np.eye(3)[[lexicon.get(w, 0) for w in s]] * 5 for s in sentences], 0

    monkeypatch.setattr(ner, "word_logits", fake_word_logits)
    pred = SimpleNamespace(labels=labels, bundle={"scheme": "IO"})
    text = "Yesterday  Angela Merkel visited Paris,\tthen Köln."
    (ents,) = ner.predict_entities(pred, [text])
    assert [(e["type"], e["text"], e["start"], e["end"], e["word_start"], e["word_end"]) for e in ents] == [
        ("person-politician", "Angela Merkel", 11, 24, 1, 3), ("location-GPE", "Paris", 33, 38, 4, 5),
        ("location-GPE", "Köln", 45, 49, 7, 8)]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in ents) and ents[0]["score"] > 0.9


def test_predict_text_and_files(ner_run, ner_files, cli, tmp_path):
    from lorafit.ner import pretokenize

    text = "Yesterday  Angela Merkel visited Paris, then   Berlin."
    res = cli("predict", ner_run, "--text", text, "--text", "Toyota opened an office in Tokyo .")
    assert res.code == 0, res.output
    rows = [json.loads(x) for x in res.output.strip().splitlines()]
    assert rows[0]["text"] == text and len(rows) == 2
    words = pretokenize(text)
    for e in rows[0]["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]
        assert (e["start"], e["end"]) == (words[e["word_start"]][1], words[e["word_end"] - 1][2])
    raw = tmp_path / "raw.txt"
    raw.write_text(f"{text}\n\nNokia hired Obama in Lagos.\n", encoding="utf-8")
    assert cli("predict", ner_run, "--input", raw, "--output", tmp_path / "o.jsonl").code == 0
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["line"] for r in out] == [1, 2, 3] and out[1]["tokens"] == [] and out[0]["text"] == text
    res = cli("predict", ner_run, "--input", ner_files["test"], "--output", tmp_path / "o.conll")
    assert res.code == 0 and "wrote 16" in res.output
    blocks = (tmp_path / "o.conll").read_text().strip().split("\n\n")
    assert [[ln.split("\t")[0] for ln in b.splitlines()] for b in blocks] == [
        t for t, _ in sentences(16, 2, long_every=4)]
    mixed = tmp_path / "in.jsonl"
    mixed.write_text(json.dumps({"id": "a", "text": text}) + "\n" + json.dumps({"tokens": ["Obama", "."]}) + "\n",
                     encoding="utf-8")
    assert cli("predict", ner_run, "--input", mixed, "--output", tmp_path / "ents.csv").code == 0
    assert (tmp_path / "ents.csv").read_text().startswith("line,type,text,start,end,word_start,word_end,score")


def test_word_predictions_cover_long_sentences(ner_run):
    from lorafit.inference import Predictor
    from lorafit.ner import predict_tags, word_logits

    pred = Predictor.load(ner_run)
    long = ["the"] * 45 + ["Angela", "Merkel", "visited", "Paris", "."]
    logits, windowed = word_logits(pred, [long, ["Paris"], []])
    assert windowed == 1 and [len(x) for x in logits] == [50, 1, 0]
    tags, scores, _ = predict_tags(pred, [long])
    assert len(tags[0]) == 50 and all(0 < s <= 1 for s in scores[0])


def test_merge_proof_and_transformers_pipeline(ner_run, cli, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import pipeline

    merged = tmp_path / "merged"
    res = cli("merge", ner_run, "--output", merged)
    assert res.code == 0 and "proof: max |logit delta|" in res.output, res.output
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["passed"] and report["inputs"] == 6
    ner = pipeline("token-classification", model=str(merged), aggregation_strategy="first")
    ents = ner("Angela Merkel visited Paris and Tokyo with Nokia .")
    types = {"location-GPE", "organization-company", "person-actor", "person-politician"}
    assert all(e["entity_group"] in types for e in ents)
    assert set(ner.model.config.id2label.values()) == {"O", *(f"I-{t}" for t in types)}
    res = cli("predict", merged, "--text", "Obama visited Paris .")
    assert res.code == 0 and json.loads(res.output.strip())["entities"] is not None
    weights = load_file(merged / "model.safetensors")
    weights["classifier.weight"][1, 0] += 0.5  # one corrupted weight
    save_file(weights, merged / "model.safetensors", metadata={"format": "pt"})
    res = cli("merge", ner_run, "--verify", merged)
    assert res.code == 2 and "[E305]" in res.output


def test_hub_run_with_scheme_conversion_and_all_subtokens(tiny_bert, tmp_path, monkeypatch, cli):
    """Hub data through the CLI (Few-NERD-like columns, fine tags chosen), IO converted to BIO on request,
    every sub-token labelled; evaluating an IO file converts it to the model's BIO."""
    import datasets
    import yaml

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _fake_fewnerd(24))
    monkeypatch.setattr(datasets, "load_dataset_builder",
                        lambda *a, **k: SimpleNamespace(info=SimpleNamespace(features=_fewnerd_features())))
    out = tmp_path / "hub"
    res = cli("train", "--model", tiny_bert, "--dataset", "DFKI-SLT/few-nerd", "--dataset-config", "supervised",
              "--tag-column", "fine_ner_tags", "--scheme", "bio", "--set", "data.label_all_subtokens=true",
              "--output-dir", out, "--max-steps", "3", *NER_FAST[4:])
    assert res.code == 0, res.output
    bundle = json.loads((out / "adapter" / "lorafit.json").read_text())
    assert bundle["scheme"] == "BIO" and bundle["ner"]["source_scheme"] == "IO"
    assert bundle["labels"][:3] == ["O", "B-art-music", "I-art-music"] and len(bundle["labels"]) == 11
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["task"] == "ner" and cfg["data"]["tag_column"] == "fine_ner_tags" and cfg["data"]["scheme"] == "bio"
    assert "seqeval mode=strict scheme=IOB2" == json.loads((out / "metrics.json").read_text())["test"]["strict_mode"]
    io_file = write_conll(tmp_path / "io.conll", sentences(6, 9))
    res = cli("evaluate", out, "--data", io_file)
    assert res.code == 0 and "scheme BIO" in res.output, res.output


def test_fewnerd_preset_runs_offline_and_plan_matches_the_run(tiny_bert, tmp_path, monkeypatch, cli):
    """The preset's Hub path (fine_ner_tags, sample sizes) on a stand-in Hub dataset, with a tiny base; the
    planner's count for the resolved config equals the run's own count."""
    import datasets
    import yaml

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _fake_fewnerd(24))
    out = tmp_path / "preset"
    res = cli("train", "--preset", "fewnerd-r16", "--model", tiny_bert, "--output-dir", out, "--max-steps", "2",
              "--set", "training.gradient_accumulation_steps=1", *NER_FAST[4:])
    assert res.code == 0, res.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["preset"] == "fewnerd-r16" and cfg["data"]["tag_column"] == "fine_ner_tags"
    assert cfg["data"]["labels"] == FINE and cfg["lora"]["r"] == 16
    params = json.loads((out / "params.json").read_text())
    plan = cli("plan", "--config", out / "config.yaml")
    assert plan.code == 0 and f"trainable    {params['trainable']:,}" in plan.output, plan.output


# ---- real data (slow) ------------------------------------------------------------------------------------------------
def _read_fewnerd() -> list[tuple[list[str], list[str]]]:
    from lorafit.ner_data import read_conll

    out = []
    for k in (1, 2, 3):
        s = read_conll(FEW_NERD / f"processed_data_{k}")
        out += list(zip(s.tokens, s.tags, strict=True))
    return out


def _io_entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """Reference scorer written independently of lorafit: maximal runs of one IO type."""
    spans, start = set(), None
    for i, t in enumerate([*tags, "O"]):
        if start is not None and t != tags[start]:
            spans.add((tags[start], start, i))
            start = None
        if start is None and t != "O" and i < len(tags):
            start = i
    return spans


def _f1(gold: list[list[str]], pred: list[list[str]], coarse: bool = False) -> float:
    tp = ng = npr = 0
    for g, p in zip(gold, pred, strict=True):
        if coarse:
            g = [t.split("-")[0] for t in g]
            p = [t.split("-")[0] for t in p]
        ge, pe = _io_entities(g), _io_entities(p)
        tp, ng, npr = tp + len(ge & pe), ng + len(ge), npr + len(pe)
    prec, rec = tp / max(npr, 1), tp / max(ng, 1)
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def _reference(model_dir: Path, labels: list[str], train: list, test: list, out: Path, *, epochs: int, lr: float,
               bs: int, max_length: int, bf16: bool) -> list[list[str]]:
    """A plain Trainer + PEFT token classifier: first-sub-token labels, truncation, same LoRA settings and
    precision."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_dir)
    l2i = {n: i for i, n in enumerate(labels)}

    def enc(rows: list, with_labels: bool) -> Dataset:
        e = tok([t for t, _ in rows], is_split_into_words=True, truncation=True, max_length=max_length)
        feats = []
        for i, (_, tags) in enumerate(rows):
            wids, prev, lab = e.word_ids(i), None, []
            for w in wids:
                lab.append(-100 if w is None or w == prev else l2i[tags[w]])
                prev = w
            f = {k: e[k][i] for k in e.keys()}
            if with_labels:
                f["labels"] = lab
            feats.append(f)
        return Dataset.from_list(feats)

    from transformers.utils import logging as hf_logging

    torch.manual_seed(42)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report only names the new head
    model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=len(labels))
    hf_logging.set_verbosity(verbosity)
    model = get_peft_model(model, LoraConfig(task_type="TOKEN_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, learning_rate=lr,
                             per_device_train_batch_size=bs, warmup_steps=0.06, weight_decay=0.01, bf16=bf16,
                             use_cpu=True, save_strategy="no", eval_strategy="no", report_to="none", seed=42,
                             logging_steps=50, disable_tqdm=True, train_sampling_strategy="group_by_length")
    Trainer(model=model, args=args, train_dataset=enc(train, True),
            data_collator=DataCollatorForTokenClassification(tok)).train()
    model.eval()
    e = tok([t for t, _ in test], is_split_into_words=True, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in e]
    preds: list[list[str]] = [["O"] * len(toks) for toks, _ in test]
    order = sorted(range(len(test)), key=lambda i: len(e["input_ids"][i]))
    with torch.inference_mode():
        for b in range(0, len(order), 64):  # batched by length; each sentence read back at its own index
            idx = order[b : b + 64]
            batch = tok.pad([{k: e[k][i] for k in keys} for i in idx], return_tensors="pt")
            logits = model(**batch).logits.argmax(-1)
            for row, i in enumerate(idx):
                prev = None
                for pos, w in enumerate(e.word_ids(i)):
                    if w is not None and w != prev:
                        preds[i][w] = labels[int(logits[row, pos])]
                    prev = w
    return preds


@pytest.mark.slow
def test_fewnerd_minilm_matches_plain_trainer_peft_reference(tmp_path):
    """LoRA on the MiniLM demo encoder, real Few-NERD sentences, held-out test: lorafit within 2 F1 points of
    (or above) a plain Trainer + PEFT reference on the same sentences, split and LoRA settings."""
    from lorafit.demo import minilm_path

    rows = _read_fewnerd()
    random.Random(0).shuffle(rows)
    train, val, test = rows[:1500], rows[1500:1700], rows[1700:2300]
    for name, part in (("train", train), ("val", val), ("test", test)):
        write_conll(tmp_path / f"{name}.conll", part)
    epochs, lr, bs = 2, 1e-3, 16
    t0 = time.time()
    res = run_cli("train", "--model", minilm_path(), "--train-file", tmp_path / "train.conll", "--validation-file",
                  tmp_path / "val.conll", "--test-file", tmp_path / "test.conll", "--output-dir", tmp_path / "run",
                  "--epochs", epochs, "--lr", lr, "--batch-size", bs, "--rank", 8,
                  "--alpha", 16, "--target-modules", "query,value", "--set", "training.save_strategy='no'",
                  "--labels", ",".join((FEW_NERD / "labels.txt").read_text().split()))  # 66 types + O
    assert res.code == 0, res.output
    lorafit_s = time.time() - t0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    labels = json.loads((tmp_path / "run" / "adapter" / "lorafit.json").read_text())["labels"]
    max_length = json.loads((tmp_path / "run" / "data_stats.json").read_text())["max_length"]
    # the reference trains in the precision lorafit chose (bf16 autocast only where the CPU has bf16: emulated
    # bf16 on a CPU without it is several times slower than fp32)
    bf16 = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["precision"] == "bf16"
    t1 = time.time()
    ref = _reference(minilm_path(), labels, train, test, tmp_path / "ref", epochs=epochs, lr=lr, bs=bs,
                     max_length=max_length, bf16=bf16)
    ref_s = time.time() - t1
    gold = [g for _, g in test]
    ours = [json.loads(x)["predicted"] for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    fine, coarse = _f1(gold, ours), _f1(gold, ours, coarse=True)
    ref_fine, ref_coarse = _f1(gold, ref), _f1(gold, ref, coarse=True)
    print(f"\nFew-NERD MiniLM: lorafit fine F1 {fine:.4f} coarse {coarse:.4f} ({lorafit_s:.0f} s); reference fine "
          f"{ref_fine:.4f} coarse {ref_coarse:.4f} ({ref_s:.0f} s)")
    assert m["io_f1"] == pytest.approx(fine, abs=1e-9) and m["coarse"]["io_f1"] == pytest.approx(coarse, abs=1e-9)
    assert fine >= ref_fine - 0.02 and coarse >= ref_coarse - 0.02
    assert fine > 0.15  # it learned something real
