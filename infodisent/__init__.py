"""InfoDisent: explain a frozen pretrained timm classifier through disentangled channels.

Example:
    >>> import infodisent
    >>> infodisent.train_run(infodisent.demo_config("runs/demo"))   # or `infodisent demo`
    >>> run = infodisent.open_run("runs/demo")
    >>> run.metrics.infodisent.top1                   # typed metrics.json
    >>> e = run.explain(17)                           # test image 17, channel by channel (numbers)
    >>> e.positive.head()                             # its strongest evidence
    >>> run.renderer().prototypes(int(e.positive.channel[0]), n=5)   # that channel's prototypes
"""

from .config import ConfigVersionError, ModelConfig, RunConfig, demo_config, tutorial_config
from .core.backbone import DEFAULT_BACKBONE, Backbone, BackboneError, feature_map
from .core.head import HeadConfig, InfoDisentHead, two_sided_max
from .core.model import InfoDisent, Outputs, RunMismatchError
from .core.weights import load_backbone
from .data.datasets import DATASETS, DatasetSpec, build_dataset
from .data.extract import extract_features
from .data.features import FeatureCache
from .data.sources import CachedSource, StreamingSource
from .errors import InfodisentError, InputError
from .eval.evaluation import explanation_metrics
from .eval.results import (
    Accuracy,
    CubPartScores,
    Evaluation,
    ExplanationMetrics,
    Faithfulness,
    PartScores,
    RunMetrics,
    Sizes,
)
from .explain.explanation import ChannelEvidence, Explanation, explain, explain_channel, explain_class
from .explain.prototypes import PrototypeIndex, StaleIndexError, mine_prototypes
from .explain.render import Patch, Renderer
from .io import CorruptFileError
from .pipeline import RunExistsError, evaluate_run, mine_run, open_or_train, train_run
from .run import NotARunError, Run, RunFiles, load, open_run
from .train.monitor import Monitor, Progress, TrainingStopped
from .train.sparse import SparseOptions, prune_head
from .train.training import FitConfig, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "Accuracy", "CubPartScores", "PartScores", "Backbone", "BackboneError", "CachedSource", "ChannelEvidence", "ConfigVersionError",
    "CorruptFileError", "DATASETS", "DEFAULT_BACKBONE", "DatasetSpec", "Evaluation", "Explanation",
    "ExplanationMetrics", "Faithfulness", "InfodisentError", "InputError", "FeatureCache", "FitConfig", "HeadConfig", "InfoDisent", "InfoDisentHead",
    "ModelConfig", "Monitor", "NotARunError", "Outputs", "Patch", "Progress", "PrototypeIndex", "Renderer", "Run", "RunConfig",
    "RunExistsError", "RunFiles", "RunMetrics", "RunMismatchError", "Sizes", "SparseOptions", "StaleIndexError",
    "StreamingSource", "TrainingStopped", "build_dataset", "demo_config", "evaluate", "evaluate_run", "explain", "explain_channel",
    "explain_class", "explanation_metrics", "extract_features", "feature_map", "fit", "load", "load_backbone",
    "mine_prototypes", "mine_run", "open_or_train", "open_run", "prune_head", "train_run", "tutorial_config",
    "two_sided_max",
]
