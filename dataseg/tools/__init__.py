"""Command-line tools (``python -m dataseg.tools.<name>``)."""
