"""Templates, catalogs and static files of the edge and collector web pages (routes in edge/)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATES_DIR = Path(__file__).parent / "templates"
LOCALES_DIR = Path(__file__).parent / "locales"

__all__ = ["LOCALES_DIR", "STATIC_DIR", "TEMPLATES_DIR"]
