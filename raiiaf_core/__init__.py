"""raiiaf: one reproducible file per generated image (image, initial noise, settings, environment).

    import raiiaf_core as rc
    rc.write("out.raiiaf", image=png_bytes, tensors={"noise": noise}, metadata={"seed": 42})
    art = rc.open("out.raiiaf"); art.metadata; art.load_tensor("noise", framework="torch")
    rc.export_png("out.raiiaf")          # out.png: shows everywhere, and rc.open reads it like the .raiiaf
"""

from .conditions import Recreation, recreated
from .drift import Difference, DriftReport, drift
from .environment import capture_environment
from .errors import (
    CorruptFileError,
    LimitExceededError,
    MetadataError,
    MissingDependencyError,
    NoArtifactError,
    RaiiafError,
    ReadError,
    RecipeMismatchError,
    TargetExistsError,
    TensorError,
    UnsupportedVersionError,
    WriteError,
)
from .images import PNG_COMPRESS_LEVEL
from .layout import MAGIC, MAJOR, MINOR, Limits
from .naming import EXTENSION, resolve_prefix
from .png_import import import_png, import_pngs
from .png_share import export_png
from .reader import Artifact, verify
from .recipe import NoiseRecipe
from .recipe import make as noise_recipe
from .reader import open_artifact as open  # noqa: A001 - the library's entry point, like PIL.Image.open
from .tensors import TensorInfo, tensor_sha256
from .writer import write, write_numbered

__version__ = "2.0.0"
FORMAT_VERSION = (MAJOR, MINOR)

__all__ = [
    "Artifact", "NoiseRecipe", "noise_recipe", "CorruptFileError", "Difference", "DriftReport", "LimitExceededError", "Limits", "MetadataError",
    "MissingDependencyError", "NoArtifactError", "RaiiafError", "ReadError", "RecipeMismatchError", "TargetExistsError", "TensorError", "TensorInfo",
    "UnsupportedVersionError", "WriteError", "capture_environment", "drift", "open", "tensor_sha256", "recreated", "Recreation", "verify",
    "write", "write_numbered", "export_png", "import_png", "import_pngs", "resolve_prefix", "FORMAT_VERSION", "EXTENSION", "MAGIC", "PNG_COMPRESS_LEVEL",
]
