"""Per-user notifications: stored, listed, and pushed live over WebSocket."""
