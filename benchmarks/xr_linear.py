"""PECOS XR-Linear on TF-IDF (uni- and bigrams, PIFA label clustering, beam 50): the peer baseline.

libpecos pins numpy<2, so this script runs in its own virtual environment; `ensure_environment()` makes it:

    python benchmarks/xr_linear.py --data ../shared/data/us_bills_110_crs_summary --out /tmp/xr/predictions.jsonl

It writes the test split's ranked predictions as JSON lines that `plant-hf evaluate` scores with plant-hf's
metrics (the same code as every other system's).
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

VENV = Path(os.environ.get("PECOS_VENV", "/tmp/pecos-venv"))


def ensure_environment() -> Path:
    """A virtual environment with libpecos (numpy<2) beside plant-hf's; made once."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import pecos.xmc.xlinear.model, sklearn"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "numpy<2", "scipy<1.14", "scikit-learn"], check=True)
    # libpecos also lists torch and transformers, which XR-Linear does not use.
    subprocess.run([*pip, "--no-deps", "libpecos"], check=True)
    subprocess.run(check, check=True)
    return python


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def train_and_predict(data: Path, out: Path, top_k: int, beam: int) -> None:
    """Runs inside the PECOS environment."""
    import numpy as np
    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = read(next(data.glob("train.jsonl*")))
    test = read(next(data.glob("test.jsonl*")))
    labels = sorted({label for record in train for label in record["labels"]})
    index = {label: i for i, label in enumerate(labels)}
    rows = [i for i, record in enumerate(train) for label in record["labels"]]
    columns = [index[label] for record in train for label in record["labels"]]
    targets = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(train), len(labels))
    )
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)
    features = vectorizer.fit_transform([record["text"] for record in train]).astype(np.float32)
    test_features = vectorizer.transform([record["text"] for record in test]).astype(np.float32)
    embeddings = LabelEmbeddingFactory.create(targets, features, method="pifa")
    clusters = Indexer.gen(embeddings)
    model = XLinearModel.train(features, targets, C=clusters)
    scores = model.predict(test_features, beam_size=beam, only_topk=top_k).tocsr()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for row, record in enumerate(test):
            start, stop = scores.indptr[row], scores.indptr[row + 1]
            order = np.argsort(-scores.data[start:stop], kind="stable")
            ranked = scores.indices[start:stop][order]
            values = scores.data[start:stop][order]
            entry = {"id": record["id"], "labels": [labels[i] for i in ranked], "scores": values.tolist()}
            handle.write(json.dumps(entry) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--top_k", type=int, default=100)
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        train_and_predict(Path(args.data), Path(args.out), args.top_k, args.beam)
        return
    python = ensure_environment()
    command = [str(python), __file__, "--inside", "--data", args.data, "--out", args.out,
               "--top_k", str(args.top_k), "--beam", str(args.beam)]  # fmt: skip
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
