"""The version, in a module of its own: the run files and bundles record it, and importing it from the
package's ``__init__`` would make every part depend on the whole package."""

__version__ = "0.1.0"
