"""kcnn's version, in a module of its own: the run folders and exports record it without importing the package
`kcnn` itself (a module under kcnn/ that imports `kcnn` closes an import circle through kcnn/__init__.py)."""

__version__ = "0.1.0"  # as kcnn.__version__ and pyproject.toml's
