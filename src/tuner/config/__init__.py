"""Config: the YAML schema (schema.py) and how a file becomes a TunerConfig (load.py)."""

from tuner.config.load import ConfigError, dump_config, load_config
from tuner.config.schema import TunerConfig

__all__ = ["ConfigError", "TunerConfig", "dump_config", "load_config"]
