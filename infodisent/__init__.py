"""InfoDisent: explain a frozen pretrained timm classifier through disentangled channels.

Example:
    >>> import infodisent
    >>> bb = infodisent.load_backbone()                       # offline ImageNet EfficientNet-Lite0
    >>> result = infodisent.train_run(infodisent.demo_config("runs/demo"))
    >>> model = infodisent.load("runs/demo")
    >>> out = model.outputs(images)                           # logits, v, J
    >>> out.contributions(model.head, target=3)               # W[3] * v, per channel
"""

from .backbone import DEFAULT_BACKBONE, Backbone, BackboneError, feature_map, load_backbone
from .datasets import DATASETS, build_dataset
from .features import FeatureCache, extract_features
from .head import HeadConfig, InfoDisentHead, two_sided_max
from .model import InfoDisent, Outputs, RunMismatchError, load
from .runs import HeadOptions, RunConfig, demo_config, evaluate_run, train_run
from .training import CachedSource, FitConfig, StreamingSource, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneError",
    "CachedSource",
    "FeatureCache",
    "FitConfig",
    "HeadConfig",
    "HeadOptions",
    "InfoDisent",
    "InfoDisentHead",
    "Outputs",
    "RunConfig",
    "RunMismatchError",
    "StreamingSource",
    "build_dataset",
    "demo_config",
    "evaluate",
    "evaluate_run",
    "extract_features",
    "feature_map",
    "fit",
    "load",
    "load_backbone",
    "train_run",
    "two_sided_max",
]
