"""Templates and static files of the edge and collector web pages (routes live in edge/)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["STATIC_DIR"]
