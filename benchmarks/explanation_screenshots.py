"""Screenshots of `plant-hf explain`'s pages for the documentation, taken with headless Chromium.

    python benchmarks/explanation_screenshots.py --model <model folder> --data ../shared/data/us_bills_110_crs_summary \
        --output docs --documents 12

explains the first documents of the corpus's test split into `<output>/pages` and writes
`<output>/explanation_page.png` (the first document's page) and `<output>/explanation_index.png`.
"""

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from plant_hf.cli import main as cli
from plant_hf.data import load_corpus


def screenshot(chromium: str, page: Path, image: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={size}", f"--screenshot={image}"]  # fmt: skip
        subprocess.run([chromium, *flags, page.as_uri()], check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder written by plant-hf fit.")
    parser.add_argument("--data", required=True, help="The corpus whose test documents are explained.")
    parser.add_argument("--output", default="docs", help="Folder for the pages and the two screenshots.")
    parser.add_argument("--documents", type=int, default=12, help="How many test documents to explain.")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Chromium (Debian package `chromium`)")
    test = load_corpus(args.data, splits=["test"]).splits["test"].select(range(args.documents))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        documents = Path(scratch) / "documents.jsonl"
        documents.write_text("".join(json.dumps(record) + "\n" for record in test), encoding="utf-8")
        pages = output / "pages"
        status = cli(["explain", "--model", args.model, "--input", str(documents), "--output_dir", str(pages)])
        if status:
            raise SystemExit(status)
    screenshot(chromium, sorted(pages.glob("0*.html"))[0], output / "explanation_page.png", "1280,760")
    screenshot(chromium, pages / "index.html", output / "explanation_index.png", "1280,560")
    print(f"-> {output / 'explanation_page.png'}, {output / 'explanation_index.png'}")


if __name__ == "__main__":
    main()
