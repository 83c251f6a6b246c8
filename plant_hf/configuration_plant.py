"""Configuration of PLANT label-wise attention classifiers."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Written into every saved config so that a folder loads with `trust_remote_code=True` through any of
# these Auto classes in a process that never imported plant_hf.
REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_plant.PlantConfig",
    "AutoModel": "modeling_plant.PlantForMultiLabelClassification",
    "AutoModelForSequenceClassification": "modeling_plant.PlantForMultiLabelClassification",
}
# The task pipeline that saved folders name, so that `pipeline(model=folder, trust_remote_code=True)` finds it.
CUSTOM_PIPELINES = {
    "xmc-classification": {"impl": "pipeline_plant.PlantClassificationPipeline", "pt": ["AutoModel"], "type": "text"}
}


@strict
class PlantConfig(PreTrainedConfig):
    r"""
    Configuration of a [`PlantForMultiLabelClassification`]: a backbone (any `AutoConfig`, nested as
    `text_config`) and a label-wise attention head over its token states.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            The backbone's configuration: a Llama, Mistral, Phi-3, Qwen2, BERT, RoBERTa ... config, or a dict
            with its `model_type`. Defaults to a Llama config.
        label_attention_dim (`int`, *optional*):
            Size of the key space in which tokens and label queries meet. Defaults to the backbone's hidden size.
        label_value_dim (`int`, *optional*):
            Rank of the label weights: they act on a shared projection of the token states to this size (cheaper
            values, smaller heads at many labels). Defaults to the backbone's hidden size (no projection).
        inattention_k (`int`, *optional*):
            Keep, per label, only the `k` highest-scoring tokens of a document; the others get no attention.
            `None` switches inattention off.
        chunk_size (`int`, *optional*):
            Documents longer than this are split into chunks of `chunk_size` tokens that the backbone encodes
            independently; the label attention spans all chunks of a document. `None` never splits.
        max_chunks (`int`, *optional*):
            Keep at most this many chunks per document (a warning names what was cut). `None` keeps all.
        chunk_prefix_ids, chunk_suffix_ids (`list[int]`, *optional*):
            The special tokens the tokenizer puts before and after a text (`[CLS]` and `[SEP]`, `<s>`). With them,
            a long document tokenized in one piece is cut as the tokenizer cuts a long text into chunks, each
            chunk framed by them, so that `model(**tokenizer(text))` reads what training in chunks read.
            `from_backbone` takes them from the backbone's tokenizer.
        streaming (`bool`, *optional*, defaults to `False`):
            Encode one chunk at a time and carry the label attention over chunks with an online softmax, so
            that inference memory does not grow with the document's length. The result equals attention over
            the concatenated chunks.
        label_block_size (`int`, *optional*):
            Score labels in blocks of this many, so that peak memory is bounded by `block x tokens` instead of
            `labels x tokens`. `None` scores all labels at once.
        static_prior_rank (`int`, *optional*):
            Add a static prior to the attention scores: token factors of this rank for the whole vocabulary, token
            biases, and label factors, planted from a ranker trained on the MIG table alone. `None`: no prior.
        context_gate (`bool`, *optional*, defaults to `False`):
            Each label reads a mix of its attention context and the document's mean token state,
            `(1 - g_l) A_l^T H + g_l mean(H)`, with a learned gate `g_l` per label (`label_context_gate`, its
            logit). `plant-hf fit` starts the gate from the label's training frequency, near 1 for labels seen
            once and at one half for frequent ones, so that a label with few examples leans on the whole document
            while its attention is still narrow and noisy.
        head_dropout (`float`, *optional*, defaults to 0.0):
            Dropout applied to the token states before the label attention.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the label queries and label weights.
        label_thresholds (`list[float]`, *optional*):
            A probability threshold per label, above which the label is predicted (`plant-hf fit` tunes them on
            the dev split for each label's F1); the pipeline applies them with `threshold="label"`. `None`: no
            per-label thresholds.
        lexical_weight (`float`, *optional*, defaults to 0.0):
            Weight `w` of the lexical channel saved in the model folder's `lexical/` (TF-IDF linear classifiers of
            the whole text, `plant_hf.lexical`) in the probabilities that the `xmc-classification` pipeline returns:
            `(1 - w) p_model + w p_lexical`. `plant-hf fit` tunes it on the dev split. 0: the model alone (also what
            `text-classification` returns, which reads the model only).
        memory_size (`int`, *optional*, defaults to 0):
            Entries of the retrieval memory: training documents (and label descriptions), each a key (its mean token
            state, L2-normalised) with a label set. `plant-hf fit` fills it. 0: no memory.
        memory_labels (`int`, *optional*, defaults to 0):
            The labels of all memory entries together (the length of the memory's flat label list).
        memory_descriptions (`int`, *optional*, defaults to 0):
            Label descriptions in the memory, each its label's key (`plant-hf fit --label_descriptions`).
        memory_top_k (`int`, *optional*, defaults to 32):
            Entries retrieved per document: its nearest keys by cosine similarity.
        memory_temperature (`float`, *optional*, defaults to 0.05):
            Temperature of the softmax over the retrieved entries' similarities; each label's memory score is the
            weight of the retrieved entries that carry it.
        memory_weight (`float`, *optional*, defaults to 0.0):
            Weight `m` of the memory in the model's probabilities, `sigmoid(logits) = (1 - m) p_head + m p_memory`
            (the logits returned are those of the mixture). `plant-hf fit` tunes it on the dev split. 0: the head
            alone.
        memory_description_weight (`float`, *optional*, defaults to 0.0):
            Weight `d` of the description scores, which reach the labels that no memory entry carries (labels of the
            catalogue never seen in training): the probabilities are `(1 - d) p + d p_descriptions`, `p` the mixture
            above. `plant-hf fit` tunes it on the dev split.
        label_tree_nodes (`int`, *optional*, defaults to 0):
            Nodes of the label tree (the root included) whose matcher shortlists the labels the head scores
            (`PlantLabelMatcher`): leaf clusters of at most `label_tree_leaf_size` labels, `label_tree_arity`
            children a node. 0: no tree; the head scores every label.
        label_tree_arity (`int`, *optional*, defaults to 16):
            Children of an inner node of the label tree.
        label_tree_leaf_size (`int`, *optional*, defaults to 100):
            Labels of a leaf cluster at the most.
        shortlist_beam (`int`, *optional*, defaults to 10):
            Leaf clusters the matcher's beam search keeps per document; their labels, with the labels of the
            training documents the retrieval memory finds nearest (where the model has a memory), are the
            shortlist.
        shortlist_min_labels (`int`, *optional*, defaults to 32768):
            With a label tree, the head scores only the shortlist from this many labels on (below it every label,
            which costs little there); the other labels get a logit of -80 (probability below 1e-34). `None`:
            always every label.
        shortlist_negatives (`int`, *optional*, defaults to 32):
            In shortlisted training, random labels added per document to its positives and the matcher's
            shortlist (its hard negatives); the loss is the binary cross-entropy over those labels alone.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from plant_hf import PlantConfig

    >>> backbone = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    >>> config = PlantConfig(text_config=backbone, num_labels=3, chunk_size=512)
    >>> config.label_attention_dim
    32
    ```
    """

    model_type = "plant"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}
    keys_to_ignore_at_inference = ["label_attentions", "hidden_states", "attentions"]

    text_config: dict | PreTrainedConfig | None = None
    label_attention_dim: int | None = None
    label_value_dim: int | None = None
    inattention_k: int | None = None
    chunk_size: int | None = None
    max_chunks: int | None = None
    chunk_prefix_ids: list[int] | None = None
    chunk_suffix_ids: list[int] | None = None
    streaming: bool = False
    label_block_size: int | None = None
    static_prior_rank: int | None = None
    context_gate: bool = False
    head_dropout: float = 0.0
    initializer_range: float = 0.02
    label_thresholds: list[float] | None = None
    lexical_weight: float = 0.0
    memory_size: int = 0
    memory_labels: int = 0
    memory_descriptions: int = 0
    memory_top_k: int = 32
    memory_temperature: float = 0.05
    memory_weight: float = 0.0
    memory_description_weight: float = 0.0
    label_tree_nodes: int = 0
    label_tree_arity: int = 16
    label_tree_leaf_size: int = 100
    shortlist_beam: int = 10
    shortlist_min_labels: int | None = 32768
    shortlist_negatives: int = 32

    def __post_init__(self, **kwargs):
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and self.id2label is not None and len(self.id2label) != num_labels:
            raise ValueError(
                f"num_labels={num_labels} disagrees with id2label, which names {len(self.id2label)} labels; "
                "pass only one of them or make them agree."
            )
        if isinstance(self.text_config, dict):
            self.text_config = _backbone_config_from_dict(self.text_config)
        super().__post_init__(**kwargs)
        if self.label2id is None:
            self.label2id = {label: index for index, label in self.id2label.items()}
        if self.label_attention_dim is None:
            self.label_attention_dim = self.text_config.hidden_size
        if self.problem_type is None:
            self.problem_type = "multi_label_classification"
        self.auto_map = {**REMOTE_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        # Where plant_hf is imported its pipeline is registered in-process; naming it in the config as well would
        # send `pipeline(...)` to the remote copy instead. Saved configs always name it (see `to_dict`).
        named = {**CUSTOM_PIPELINES, **(getattr(self, "custom_pipelines", None) or {})}
        self.custom_pipelines = {task: spec for task, spec in named.items() if not _registered_in_process(task)}

    @property
    def tokens_read(self) -> int | None:
        """How many tokens of a document tokenized in one piece (special tokens included) the model reads:
        `max_chunks` chunks of `chunk_size`, each framed by the special tokens; None where it reads every chunk or
        does not split documents."""
        if self.chunk_size is None or self.max_chunks is None:
            return None
        specials = len(self.chunk_prefix_ids or []) + len(self.chunk_suffix_ids or [])
        return self.max_chunks * (self.chunk_size - specials) + specials

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["custom_pipelines"] = {**CUSTOM_PIPELINES, **(output.get("custom_pipelines") or {})}
        return output

    def validate_architecture(self):
        """Part of `@strict` validation: the head's sizes and limits must make sense."""
        super().validate_architecture()
        if getattr(self.text_config, "hidden_size", None) is None:
            raise ValueError(
                f"The backbone config ({type(self.text_config).__name__}) has no `hidden_size`; "
                "PLANT needs a backbone that returns token hidden states."
            )
        names = (
            "label_attention_dim",
            "label_value_dim",
            "inattention_k",
            "chunk_size",
            "max_chunks",
            "label_block_size",
            "static_prior_rank",
        )
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be a positive integer or None, got {value}.")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"`head_dropout` must be in [0, 1), got {self.head_dropout}.")
        if self.num_labels < 1:
            raise ValueError(f"`num_labels` must be at least 1, got {self.num_labels}.")
        if self.label_thresholds is not None and len(self.label_thresholds) != self.num_labels:
            raise ValueError(
                f"`label_thresholds` holds {len(self.label_thresholds)} thresholds for {self.num_labels} labels; "
                "give one per label, or None."
            )
        for name in ("lexical_weight", "memory_weight", "memory_description_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if (
            min(self.memory_size, self.memory_labels, self.memory_descriptions) < 0
            or self.memory_top_k < 1
            or self.memory_temperature <= 0
        ):
            raise ValueError(
                "The memory's sizes must be at least 0, its memory_top_k at least 1 and its memory_temperature "
                f"above 0; got {self.memory_size}, {self.memory_labels}, {self.memory_top_k}, "
                f"{self.memory_temperature}."
            )
        if {int(index): label for label, index in self.label2id.items()} != self.id2label:
            raise ValueError("label2id must be the inverse of id2label; pass only id2label to derive it.")
        if self.problem_type != "multi_label_classification":
            raise ValueError(
                f"PLANT is a multi-label classifier; problem_type must be 'multi_label_classification', "
                f"got {self.problem_type!r}."
            )


def _registered_in_process(task: str) -> bool:
    from transformers.pipelines import PIPELINE_REGISTRY

    return task in PIPELINE_REGISTRY.get_supported_tasks()


def _backbone_config_from_dict(text_config: dict) -> PreTrainedConfig:
    """Build the backbone config from a dict, naming the problem when its `model_type` is unknown."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = text_config.get("model_type", PlantConfig.sub_configs_defaults["text_config"].model_type)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"Unknown backbone type {model_type!r} in text_config. Use a model type that transformers knows "
            "(llama, mistral, phi3, qwen2, bert, roberta, ...), or pass the backbone's config object, e.g. "
            "AutoConfig.from_pretrained(path, trust_remote_code=True)."
        )
    return CONFIG_MAPPING[model_type](**{k: v for k, v in text_config.items() if k != "model_type"})


__all__ = ["PlantConfig"]
