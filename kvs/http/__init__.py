"""The HTTP edge: `toolkit` (bodies, parameters, JSON answers, error rendering, the
wrapper around every route) and one module per group of routes."""
