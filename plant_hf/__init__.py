"""plant-hf: PLANT label-wise attention for extreme multi-label text classification on any transformers backbone."""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_plant import PlantConfig
from .modeling_plant import PlantForMultiLabelClassification, PlantLabelAttention, PlantOutput, PlantPreTrainedModel
from .pipeline_plant import TASK, PlantClassificationPipeline

__version__ = "0.1.0"

AutoConfig.register(PlantConfig.model_type, PlantConfig, exist_ok=True)
AutoModel.register(PlantConfig, PlantForMultiLabelClassification, exist_ok=True)
AutoModelForSequenceClassification.register(PlantConfig, PlantForMultiLabelClassification, exist_ok=True)
# Saved folders ship configuration_plant.py and modeling_plant.py for loading with trust_remote_code=True.
PlantConfig.register_for_auto_class()
PlantForMultiLabelClassification.register_for_auto_class("AutoModel")
PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=PlantClassificationPipeline, pt_model=AutoModel, type="text")

__all__ = [
    "PlantClassificationPipeline",
    "PlantConfig",
    "PlantForMultiLabelClassification",
    "PlantLabelAttention",
    "PlantOutput",
    "PlantPreTrainedModel",
    "__version__",
]
