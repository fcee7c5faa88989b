"""Explanations of a trained model (floor 5, beside :mod:`infodisent.train`, which it does not import):
decisions split into channel contributions (:mod:`.explanation`), each channel's prototypes mined from
the training images (:mod:`.prototypes`), the pictures of both (:mod:`.render`), the post-hoc baselines
they are compared with (:mod:`.posthoc`) and the adapters that let Captum and Quantus call InfoDisent
(:mod:`.interop`, imported on demand: it loads Captum). Imports data, core, records and the infrastructure."""

from .explanation import (
    ChannelEvidence,
    ChannelExplanation,
    ClassExplanation,
    Coverage,
    Explanation,
    channel_overview,
    class_index,
    explain,
    explain_channel,
    explain_class,
    explain_views,
)

__all__ = [
    "ChannelEvidence", "ChannelExplanation", "ClassExplanation", "Coverage", "Explanation", "channel_overview",
    "class_index", "explain", "explain_channel", "explain_class", "explain_views",
]
