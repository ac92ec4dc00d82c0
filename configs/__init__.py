from configs.config import ConfigError, load_config, save_config
from configs.defaults import get_cfg_defaults

__all__ = ["ConfigError", "get_cfg_defaults", "load_config", "save_config"]
