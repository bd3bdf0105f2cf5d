"""Batch AI video / image generation (seed 003): credits, plans, a DB-backed task queue."""
