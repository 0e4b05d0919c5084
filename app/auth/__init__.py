"""Authentication (API keys), tenants and per-tenant limits."""
