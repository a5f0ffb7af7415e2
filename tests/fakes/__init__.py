"""Fakes of the model providers, each written from the provider's public API reference and checked
by its official SDK (tests/fakes/test_fakes_sdk.py). They are deterministic like the demo model:

* prompt tokens = ceil(characters of the prompt text / 4);
* completion tokens = min(the requested maximum, `REPLY_TOKENS`), one word per token;
* a prompt containing `UNSAFE` gets the provider's safety stop, one containing `FAIL400` its 400.
"""
