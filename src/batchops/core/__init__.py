"""Mechanisms shared by every domain. Nothing in here imports a domain."""
