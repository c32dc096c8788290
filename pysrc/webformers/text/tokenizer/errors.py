"""``TokenizerError``: an invalid or unsupported tokenizer file, or bad input to a tokenizer."""

__all__ = ["TokenizerError"]


class TokenizerError(ValueError):
    """Raised for an invalid or unsupported tokenizer.json / tokenizer_config.json or bad input."""
