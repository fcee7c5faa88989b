"""InfoDisent: explain a frozen pretrained timm classifier through disentangled channels.

Example:
    >>> import infodisent
    >>> bb = infodisent.load_backbone()                       # offline ImageNet EfficientNet-Lite0
    >>> result = infodisent.train_run(infodisent.demo_config("runs/demo"))
    >>> model = infodisent.load("runs/demo")
    >>> out = model.outputs(images)                           # logits, v, J
    >>> out.contributions(model.head, target=3)               # W[3] * v, per channel
    >>> index = infodisent.mine_run("runs/demo")              # prototype index of the training split
    >>> e = infodisent.explain(model, image, index=index)     # one decision, channel by channel
"""

from .backbone import DEFAULT_BACKBONE, Backbone, BackboneError, feature_map, load_backbone
from .datasets import DATASETS, build_dataset
from .evaluation import explanation_metrics
from .explain import Explanation, explain, explain_channel, explain_class
from .features import FeatureCache, extract_features
from .head import HeadConfig, InfoDisentHead, two_sided_max
from .model import InfoDisent, Outputs, RunMismatchError, load
from .prototypes import PrototypeIndex, mine_prototypes, render_prototypes
from .runs import HeadOptions, RunConfig, demo_config, evaluate_run, mine_run, train_run
from .sparse import SparseOptions, prune_head
from .training import CachedSource, FitConfig, StreamingSource, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "Explanation",
    "PrototypeIndex",
    "SparseOptions",
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
    "explain",
    "explain_channel",
    "explain_class",
    "explanation_metrics",
    "extract_features",
    "feature_map",
    "fit",
    "load",
    "load_backbone",
    "mine_prototypes",
    "mine_run",
    "prune_head",
    "render_prototypes",
    "train_run",
    "two_sided_max",
]
