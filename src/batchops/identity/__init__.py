"""Users, roles, departments membership and device quotas."""
