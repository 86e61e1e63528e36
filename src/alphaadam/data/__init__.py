"""Language-modelling data: tokenizers (``tokenizers.py``), token caches of uint16 memmaps and
the cache of local text files (``token_cache.py``), OpenWebText (``openwebtext.py``) and the
generated smoke corpus (``smoke.py``)."""
