"""Dataset formats: one module per dataset `type`, each a `DatasetFormat` in the registry.

The interface and the registry are in `base` (read its docstring); this package imports
every format module so that `FORMATS` holds them all. `get_format(ds)` is the one lookup.
"""

from __future__ import annotations

from tuner.config.schema import DatasetConfig
from tuner.data.formats import (  # noqa: F401 - each module registers its formats
    alpaca,
    bradley_terry,
    chat_template,
    classification,
    completion,
    input_output,
    instruct,
    preference,
    pretokenized,
    prompts,
    pygmalion,
    user_defined,
)
from tuner.data.formats.base import (
    FORMATS,
    DatasetFormat,
    EncodeContext,
    EncodeResult,
    FieldError,
    SegmentFormat,
    register,
    text_field,
)
from tuner.data.labels import Segment

__all__ = ["FORMATS", "DatasetFormat", "EncodeContext", "EncodeResult", "FieldError", "Segment", "SegmentFormat",
           "get_format", "register", "text_field"]


def get_format(ds: DatasetConfig) -> DatasetFormat:
    """The format of a dataset entry (by `DatasetConfig.kind`)."""
    return FORMATS[ds.kind]
