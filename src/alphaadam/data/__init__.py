"""Language-modelling data: tokenizers, token caches (uint16 memmaps) and the smoke corpus."""
