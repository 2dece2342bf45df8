"""One error family for everything a user can cause; the CLI prints it on one line and exits 2."""


class LfpError(Exception):
    """Base class: the message must name the file, line or field that is wrong."""


class ConfigError(LfpError):
    """params.yaml (or a profile) has an unknown key, a wrong type or an out-of-range value."""


class DataError(LfpError):
    """An input data file is missing, empty or malformed (message: `file:line: what`)."""


class ModelLoadError(LfpError):
    """A model source could not be loaded (hub unreachable, bad path, unknown architecture)."""


class ArtifactError(LfpError):
    """A pipeline artifact (safetensors, activation shard, JSON) is missing or corrupted."""


class BackendError(LfpError):
    """An external service (LLM endpoint, MLflow server) failed or answered nonsense."""
