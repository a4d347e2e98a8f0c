"""The ASGI middlewares around the app: API key, body limit, shutdown drain, request log."""
