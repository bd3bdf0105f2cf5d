"""Canteen batch meal ordering by department admins (seed 002)."""
