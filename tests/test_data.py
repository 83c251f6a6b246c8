"""Readers, label vocabulary, chunked tokenisation and the collator, on small files the tests write."""

import gzip
import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from scipy import sparse

from plant_hf.data import (
    DataFormatError,
    LabelVocabulary,
    PlantDataCollator,
    detect_format,
    load_corpus,
    read_attentionxml,
    read_caml_csv,
    read_hub,
    read_jsonl,
    read_predictions,
    read_xmc_base,
    tokenize_split,
)

from conftest import tiny_model

RECORDS = [
    {"id": "a", "text": "w5 w6 w7", "labels": ["X", "Y"]},
    {"id": "b", "text": "w8 w9", "labels": ["Y"]},
    {"id": "c", "text": "w10", "labels": []},
]


def write_jsonl(path, records, gz=False):
    lines = "".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(lines)
    else:
        path.write_text(lines)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_reads_ids_texts_and_labels(tmp_path, gz):
    dataset, report = read_jsonl(write_jsonl(tmp_path / "train.jsonl", RECORDS, gz=gz))
    assert dataset.column_names == ["id", "text", "labels"]
    assert dataset["id"] == ["a", "b", "c"] and dataset["labels"] == [["X", "Y"], ["Y"], []]
    assert report.documents == 3 and not report.skipped


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "x", "text": "w5", "labels": ["X"', "malformed JSON"),
        ('{"id": "x", "labels": ["X"]}', "missing field 'text'"),
        ('{"id": "x", "text": "   ", "labels": ["X"]}', "empty text"),
        ('{"id": "x", "text": "w5", "labels": "X;Y"}', "labels is a str, not a list of strings"),
        ('{"id": "x", "text": "w5", "labels": [["X"]]}', "labels is a list holding list, not a list of strings"),
        ('["w5", ["X"]]', "the line is not a JSON object"),
    ],
)
def test_jsonl_bad_record_names_file_and_line_or_is_skipped_and_counted(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "train.jsonl", [RECORDS[0], bad_line, RECORDS[1]])
    with pytest.raises(DataFormatError, match=rf"train.jsonl:2: {message}"):
        read_jsonl(path)
    dataset, report = read_jsonl(path, on_error="skip")
    assert dataset["id"] == ["a", "b"]
    assert sum(report.skipped.values()) == 1 and message in str(report) and "train.jsonl:2" in str(report)


def test_jsonl_custom_fields_integer_labels_and_repeats(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "w5", "codes": [401, 401, "250.00"]}])
    dataset, report = read_jsonl(path, text_field="body", labels_field="codes")
    assert dataset["labels"] == [["401", "250.00"]] and dataset["id"] == ["d.jsonl:1"]
    assert report.collapsed_duplicate_labels == 1 and "1 repeated labels" in str(report)


def test_caml_csv_with_quoted_multiline_notes(tmp_path):
    path = tmp_path / "train_full.csv"
    path.write_text(
        "SUBJECT_ID,HADM_ID,TEXT,LABELS,length\n"
        '1,100,"chest pain\nand, troponin",410.71;414.01,4\n'
        '2,200,"renal cyst",593.2,2\n'
        '3,300," ",401.9,0\n'
    )
    with pytest.raises(DataFormatError, match=r"train_full\.csv:5: empty text"):
        read_caml_csv(path)
    dataset, report = read_caml_csv(path, on_error="skip")
    assert dataset["id"] == ["100", "200"]
    assert dataset["text"][0] == "chest pain\nand, troponin"
    assert dataset["labels"] == [["410.71", "414.01"], ["593.2"]]
    assert report.skipped["empty text"] == 1


def test_caml_csv_missing_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("HADM_ID,NOTE,LABELS\n1,x,A\n")
    with pytest.raises(DataFormatError, match=r"train.csv:1: missing column 'TEXT'.*text_column="):
        read_caml_csv(path)


def test_caml_csv_columns_are_named_like_any_corpus_fields(tmp_path):
    """`--text_field` / `--labels_field` name a CSV's columns too, without regard to case."""
    (tmp_path / "train.csv").write_text("hadm_id,Note,Codes\n1,w5 w6,A;B\n")
    corpus = load_corpus(tmp_path, text_field="note", labels_field="CODES")
    assert corpus.splits["train"]["text"] == ["w5 w6"] and corpus.splits["train"]["labels"] == [["A", "B"]]
    (tmp_path / "train.csv").write_text("hadm_id,text,labels\n7,w7,C\n")
    dataset = load_corpus(tmp_path).splits["train"]
    assert dataset["id"] == ["7"] and dataset["labels"] == [["C"]]
    with pytest.raises(DataFormatError, match=r"missing column 'note'.*--text_field / --labels_field"):
        load_corpus(tmp_path, text_field="note")


def test_attentionxml_pairs_lines_and_refuses_a_mismatch(tmp_path):
    (tmp_path / "train_texts.txt").write_text("w5 w6\nw7\n")
    (tmp_path / "train_labels.txt").write_text("X Y\n\n")
    dataset, _ = read_attentionxml(tmp_path / "train_texts.txt", tmp_path / "train_labels.txt")
    assert dataset["labels"] == [["X", "Y"], []]
    (tmp_path / "train_labels.txt").write_text("X\n")
    with pytest.raises(DataFormatError, match=r"has 2 lines but .*train_labels\.txt has 1"):
        read_attentionxml(tmp_path / "train_texts.txt", tmp_path / "train_labels.txt")


def test_xmc_base_layout(tmp_path):
    (tmp_path / "X.trn.txt").write_text("w5 w6\nw7\n")
    sparse.save_npz(tmp_path / "Y.trn.npz", sparse.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]])))
    (tmp_path / "output-items.txt").write_text("alpha\nbeta\ngamma\n")
    dataset, _ = read_xmc_base(tmp_path, "train")
    assert dataset["labels"] == [["alpha", "gamma"], ["beta"]]
    corpus = load_corpus(tmp_path)
    assert corpus.format == "xmc-base" and list(corpus.splits) == ["train"]


def test_hub_path_with_class_label_features(tmp_path):
    features = Features({"text": Value("string"), "topics": List(ClassLabel(names=["econ", "law", "health"]))})
    Dataset.from_dict({"text": ["w5", "w6 w7"], "topics": [[0, 2], [1]]}, features=features).to_parquet(
        tmp_path / "train.parquet"
    )
    dataset, report = read_hub("parquet", "train", labels_field="topics", data_files=str(tmp_path / "train.parquet"))
    assert dataset["labels"] == [["econ", "health"], ["law"]] and report.documents == 2
    with pytest.raises(DataFormatError, match=r"missing column 'labels'"):
        read_hub("parquet", "train", data_files=str(tmp_path / "train.parquet"))


def test_hub_corpus_reads_the_splits_the_dataset_has(tmp_path):
    for split, records in (("train", RECORDS), ("validation", RECORDS[:1])):
        Dataset.from_list(records).to_parquet(tmp_path / f"{split}.parquet")
    files = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "validation")}
    corpus = load_corpus("parquet", format="hub", data_files=files)
    assert {name: len(split) for name, split in corpus.splits.items()} == {"train": len(RECORDS), "dev": 1}


def test_load_corpus_detects_layouts_and_dev_aliases(tmp_path):
    write_jsonl(tmp_path / "train.jsonl.gz", RECORDS, gz=True)
    write_jsonl(tmp_path / "validation.jsonl", RECORDS[:1])
    write_jsonl(tmp_path / "test.jsonl", RECORDS[1:])
    corpus = load_corpus(tmp_path)
    assert corpus.format == "jsonl" and {name: len(ds) for name, ds in corpus.splits.items()} == {
        "train": 3,
        "dev": 1,
        "test": 2,
    }
    assert "train.jsonl.gz: 3 documents" in str(corpus)
    single = load_corpus(tmp_path / "test.jsonl", splits=["test"])
    assert list(single.splits) == ["test"]


def test_load_corpus_refuses_unknown_layouts_and_missing_train(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataFormatError, match="no known layout"):
        load_corpus(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", RECORDS)
    (tmp_path / "train.jsonl").rename(tmp_path / "train.json")
    write_jsonl(tmp_path / "train.jsonl", RECORDS)
    with pytest.raises(DataFormatError, match="several files for the train split"):
        load_corpus(tmp_path)
    assert detect_format("some-org/some-dataset") == "hub"


def test_label_vocabulary_counts_training_labels_and_reports_unseen(tmp_path):
    vocabulary = LabelVocabulary.from_training([["Y", "X"], ["Y"], []])
    assert vocabulary.labels == ["X", "Y"] and vocabulary.counts.tolist() == [1, 2] and vocabulary.num_documents == 3
    test_labels = [["X", "Z"], ["W", "Z", "Y"], []]
    assert vocabulary.encode(test_labels) == [[0], [1], []]
    unseen = vocabulary.unseen(test_labels, "test")
    assert (unseen.distinct, unseen.occurrences, unseen.documents) == (2, 3, 2)
    assert "2 labels unseen in training" in str(unseen)
    targets, names = vocabulary.evaluation_targets(test_labels)
    assert names == ["Z", "W"] and targets.shape == (3, 4)
    assert targets.toarray().tolist() == [[1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]
    vocabulary.save(tmp_path / "labels.json")
    loaded = LabelVocabulary.load(tmp_path / "labels.json")
    assert loaded.labels == vocabulary.labels and loaded.fingerprint == vocabulary.fingerprint
    assert LabelVocabulary.from_training([["X"]]).fingerprint != vocabulary.fingerprint


def test_training_split_without_labels_is_refused():
    with pytest.raises(DataFormatError, match="The training split \\(2 documents\\) has no labels at all"):
        LabelVocabulary.from_training([[], []])


def test_tokenize_split_chunks_with_special_tokens_and_counts_truncation(tokenizer):
    from tokenizers import processors

    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    text = " ".join(f"w{i}" for i in range(4, 15))  # 11 words
    dataset = Dataset.from_dict({"id": ["d", "e"], "text": [text, "w5"], "labels": [["X", "Q"], []]})
    vocabulary = LabelVocabulary.from_training([["X"], ["Y"]])
    tokenized, report = tokenize_split(dataset, tokenizer, vocabulary, chunk_size=5, max_chunks=2, split="dev")
    first = tokenized[0]["input_ids"]
    assert first == [[1, 4, 5, 6, 2], [1, 7, 8, 9, 2]]  # 3 words per chunk between <s> and </s>
    assert tokenized[1]["input_ids"] == [[1, 5, 2]]
    assert tokenized["label_ids"] == [[0], []] and tokenized["labels"] == [["X", "Q"], []]
    assert (report.truncated_documents, report.kept_tokens, report.dropped_tokens) == (1, 7, 5)
    assert "1 documents truncated, 5 tokens (41.7%) dropped" in str(report)
    with pytest.raises(ValueError, match="chunk_size=2 leaves no room"):
        tokenize_split(dataset, tokenizer, vocabulary, chunk_size=2)


def test_collator_pads_chunks_and_builds_multi_hot_targets():
    collator = PlantDataCollator(num_labels=5, pad_token_id=0)
    batch = collator([{"input_ids": [[5, 6, 7], [8]], "label_ids": [0, 3]}, {"input_ids": [9, 10], "label_ids": []}])
    assert batch["input_ids"].tolist() == [[[5, 6, 7], [8, 0, 0]], [[9, 10, 0], [0, 0, 0]]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 1], [1, 0, 0]], [[1, 1, 0], [0, 0, 0]]]
    assert batch["labels"].tolist() == [[1, 0, 0, 1, 0], [0] * 5]
    assert "labels" not in collator([{"input_ids": [5]}])


def test_collated_batches_train_the_model(tokenizer):
    dataset = Dataset.from_dict(
        {"id": ["a", "b"], "text": ["w5 w6 w7 w8 w9 w10 w11", "w12 w13"], "labels": [["X"], ["Y", "X"]]}
    )
    vocabulary = LabelVocabulary.from_training(dataset["labels"])
    tokenized, _ = tokenize_split(dataset, tokenizer, vocabulary, chunk_size=3)
    batch = PlantDataCollator(len(vocabulary), tokenizer.pad_token_id)(list(tokenized))
    model = tiny_model("bert", num_labels=len(vocabulary), chunk_size=3)
    out = model(**batch)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)


def _bytes_file(path, content: bytes):
    path.write_bytes(content)
    return path


def _truncated_gzip(path):
    data = gzip.compress(("".join(json.dumps(r) + "\n" for r in RECORDS * 50)).encode())
    return _bytes_file(path, data[: len(data) // 2])


GOOD = b'{"id": "a", "text": "w5 w6", "labels": ["X"]}\n'
LATIN1 = b'{"id": "b", "text": "caf\xe9", "labels": ["Y"]}\n'
TWIN = b'{"id": "a", "text": "w7 w8", "labels": ["Y"]}\n'


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        (
            "latin1.jsonl",
            lambda p: _bytes_file(p, GOOD + LATIN1),
            r"latin1\.jsonl:2: byte 0xe9 at column 25 is not UTF-8",
        ),
        (
            "twins.jsonl",
            lambda p: _bytes_file(p, GOOD + TWIN),
            r"twins\.jsonl:2: id 'a' was already given to the "
            r"document at .*twins\.jsonl:1\. Give each document of a split its own id",
        ),
        ("cut.jsonl.gz", _truncated_gzip, r"cut\.jsonl\.gz: the compressed data breaks off after line \d+ .*truncated"),
    ],
)
def test_bad_files_are_refused_naming_the_file_line_and_fix(tmp_path, name, write, message):
    path = write(tmp_path / name)
    with pytest.raises(DataFormatError, match=message) as refused:
        read_jsonl(path)
    if "breaks off" not in message:
        assert "--on_error skip" in str(refused.value)
        dataset, report = read_jsonl(path, on_error="skip")
        assert dataset["id"] == ["a"] and sum(report.skipped.values()) == 1


def _latin1_csv(folder):
    return _bytes_file(
        folder / "notes.csv",
        b'HADM_ID,TEXT,LABELS\n1,"w5\nw6",X\n2,"w7\ncaf\xe9",Y\n3,w8,Z\n',
    )


def _latin1_attentionxml(folder):
    _bytes_file(folder / "train_labels.txt", b"X\nY\nZ\n")
    return _bytes_file(folder / "train_texts.txt", b"w5\ncaf\xe9\nw8\n")


def _latin1_xmc_base(folder):
    sparse.save_npz(folder / "Y.trn.npz", sparse.csr_matrix(np.eye(3)))
    (folder / "output-items.txt").write_text("X\nY\nZ\n")
    return _bytes_file(folder / "X.trn.txt", b"w5\ncaf\xe9\nw8\n")


@pytest.mark.parametrize(
    ("write", "read", "where"),
    [
        (_latin1_csv, read_caml_csv, r"notes\.csv:5: byte 0xe9 at column 4"),
        (_latin1_attentionxml, lambda path, **kw: read_attentionxml(path, path.parent / "train_labels.txt", **kw),
         r"train_texts\.txt:2: byte 0xe9 at column 4"),
        (_latin1_xmc_base, lambda path, **kw: read_xmc_base(path.parent, "train", **kw),
         r"X\.trn\.txt:2: byte 0xe9 at column 4"),
    ],
)  # fmt: skip
def test_every_reader_names_the_line_of_a_byte_that_is_not_utf8(tmp_path, write, read, where):
    path = write(tmp_path)
    with pytest.raises(DataFormatError, match=where + r" is not UTF-8\. Save the file as UTF-8"):
        read(path)
    dataset, report = read(path, on_error="skip")
    assert len(dataset) == 2 and dataset["labels"][1] == ["Z"] and sum(report.skipped.values()) == 1


def test_a_prediction_file_that_is_not_utf8_is_refused_naming_its_line(tmp_path):
    path = _bytes_file(tmp_path / "preds.jsonl", b'{"id": "a", "labels": [], "scores": []}\n{"id": "caf\xe9"}\n')
    with pytest.raises(DataFormatError, match=r"preds\.jsonl:2: byte 0xe9 at column 12 is not UTF-8"):
        read_predictions(path)


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    dataset, _ = read_jsonl(_bytes_file(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + GOOD))
    assert dataset["id"] == ["a"] and dataset["text"] == ["w5 w6"]


@pytest.mark.parametrize("source", ["../no/such/corpus", "/data/missing", "corpus/train.jsonl", "notes.jsonl.gz"])
def test_a_missing_local_path_is_a_local_error_not_a_hub_request(source):
    with pytest.raises(DataFormatError, match="no such file or folder"):
        load_corpus(source)
    assert detect_format("some-org/some-dataset") == "hub"


def test_an_empty_split_is_refused_naming_its_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", RECORDS)
    (tmp_path / "dev.jsonl").write_text("\n")
    with pytest.raises(DataFormatError, match=r"dev\.jsonl: 0 documents: the dev split holds no usable document"):
        load_corpus(tmp_path)


def test_synthetic_words_grow_a_syllable_where_three_cannot_make_enough():
    from plant_hf.data.synthetic import synthetic_words

    few, many = synthetic_words(100), synthetic_words(5000)  # 16 syllables make 4,096 words of three
    assert len(set(few)) == 100 and len(set(many)) == 5000
    assert {len(word) for word in few} == {6} and {len(word) for word in many} == {8}


def test_a_vocabularys_label_index_is_built_once():
    from plant_hf.data import LabelVocabulary

    vocabulary = LabelVocabulary.from_training([["b", "a"], ["c"]])
    assert vocabulary.label2id is vocabulary.label2id and vocabulary.label2id == {"a": 0, "b": 1, "c": 2}
    assert vocabulary.id2label is vocabulary.id2label and vocabulary.encode([["c", "z", "a"]]) == [[2, 0]]
