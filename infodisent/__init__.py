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

from .core.backbone import Backbone, BackboneError, feature_map
from .core.head import InfoDisentHead, two_sided_max
from .core.model import InfoDisent, Outputs, RunMismatchError
from .core.weights import load_backbone
from .data.datasets import DATASETS, build_dataset, from_spec
from .data.extract import extract_features
from .data.features import FeatureCache
from .data.sources import CachedSource, StreamingSource
from .errors import CorruptFileError, InfodisentError, InputError
from .eval.evaluation import explanation_metrics
from .explain.explanation import ChannelEvidence, Explanation, explain, explain_channel, explain_class
from .explain.prototypes import PrototypeIndex, StaleIndexError, mine_prototypes
from .explain.render import Patch, Renderer
from .pipeline import RunExistsError, evaluate_run, mine_run, open_or_train, train_run
from .records.data import DatasetSpec, PartsConfig
from .records.model import DEFAULT_BACKBONE, HeadConfig, ModelConfig
from .records.options import FitConfig, SparseOptions
from .records.results import (
    Accuracy,
    CubPartScores,
    Evaluation,
    ExplanationMetrics,
    Faithfulness,
    PartScores,
    RunMetrics,
    Sizes,
)
from .records.run import ConfigVersionError, RunConfig, RunRecord, demo_config, tutorial_config
from .run import NotARunError, Run, RunFiles, open_run
from .train.monitor import Monitor, Progress, TrainingStopped
from .train.sparse import prune_head
from .train.training import evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "Accuracy", "Backbone", "BackboneError", "build_dataset", "CachedSource", "ChannelEvidence",
    "ConfigVersionError", "CorruptFileError", "CubPartScores", "DATASETS", "DatasetSpec", "DEFAULT_BACKBONE",
    "demo_config", "evaluate", "evaluate_run", "Evaluation", "explain", "explain_channel", "explain_class",
    "Explanation", "explanation_metrics", "ExplanationMetrics", "extract_features", "Faithfulness", "feature_map",
    "FeatureCache", "fit", "FitConfig", "from_spec", "HeadConfig", "InfoDisent", "InfodisentError",
    "InfoDisentHead", "InputError", "load_backbone", "mine_prototypes", "mine_run", "ModelConfig", "Monitor",
    "NotARunError", "open_or_train", "open_run", "Outputs", "PartsConfig", "PartScores", "Patch", "Progress",
    "PrototypeIndex", "prune_head", "Renderer", "Run", "RunConfig", "RunExistsError", "RunFiles", "RunMetrics",
    "RunMismatchError", "RunRecord", "Sizes", "SparseOptions", "StaleIndexError", "StreamingSource", "train_run",
    "TrainingStopped", "tutorial_config", "two_sided_max"
]
