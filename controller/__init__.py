"""cadml: a GitOps declarative controller for the AI models behind CAD similarity search."""

__version__ = "0.1.0"
