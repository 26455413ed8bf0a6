"""Models: what a model is and what can be installed (catalog.py), what is installed and how a name
resolves (registry.py: HOME/models.json, KITTY's MODELS_YAML and names), and size variants (variants.py)."""

from __future__ import annotations

from .catalog import CATALOG, MOCK_MODEL, CatalogEntry, ModelInfo
from .registry import KITTY_NAMES, Registry, known_names, model_from_folder, read_models_yaml, resolve_model
from .variants import Variant, pick

__all__ = ["ModelInfo", "CatalogEntry", "CATALOG", "Registry", "resolve_model", "model_from_folder", "MOCK_MODEL",
           "KITTY_NAMES", "known_names", "read_models_yaml", "Variant", "pick"]
