"""Provider adapters: one module per wire API (see base.py and docs/providers.md)."""
