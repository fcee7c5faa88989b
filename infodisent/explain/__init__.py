"""Explanations of a trained model: decisions split into channel contributions (:mod:`.explanation`),
each channel's prototypes mined from the training images (:mod:`.prototypes`), the pictures of both
(:mod:`.render`), the post-hoc baselines they are compared with (:mod:`.posthoc`) and the adapters that
let Captum and Quantus call InfoDisent (:mod:`.interop`, imported on demand: it loads Captum)."""

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
    prepare_inputs,
)

__all__ = [
    "ChannelEvidence", "ChannelExplanation", "ClassExplanation", "Coverage", "Explanation", "channel_overview",
    "class_index", "explain", "explain_channel", "explain_class", "explain_views", "prepare_inputs",
]
