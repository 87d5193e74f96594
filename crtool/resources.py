"""Where the shipped templates and the Alembic migrations are, installed or in a checkout.

The wheel carries them inside the package (`crtool/templates`, `crtool/migrations`); a source
checkout keeps them at the top of the repository, beside the package.
"""

from __future__ import annotations

from pathlib import Path


def shipped_dir(name: str) -> Path:
    """The directory `name` ("templates" or "migrations") as installed, else in the checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / name
    if packaged.is_dir():
        return packaged
    return here.parent / name
