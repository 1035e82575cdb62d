"""The domain check: how far a slide is from what a model was trained on.

Each checkpoint may carry a compact description of its training data (``meta["domain"]``:
stain vectors, optical-density statistics, pixel sizes, encoder feature statistics), written
by the trainer at the end of training or added later with
``python -m training.domain describe CHECKPOINT --data DIR [DIR ...]``. Segmenting a slide then
reports its distance from that data and warns in plain words when it is far.
"""

from training.domain.check import (
    FAR,
    UNKNOWN,
    DomainCheck,
    FeatureTap,
    SlideSample,
    check_slide,
    domain_distance,
)
from training.domain.description import (
    DescriptionError,
    check_description,
    describe_domain,
    sample_tiles,
)
from training.domain.records import describe_checkpoint, describe_records

__all__ = [
    "FAR",
    "UNKNOWN",
    "DescriptionError",
    "DomainCheck",
    "FeatureTap",
    "SlideSample",
    "check_description",
    "check_slide",
    "describe_checkpoint",
    "describe_domain",
    "describe_records",
    "domain_distance",
    "sample_tiles",
]
