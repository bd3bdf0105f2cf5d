"""batchops: batch operations for multi-tenant platforms."""

__version__ = "0.1.0"
