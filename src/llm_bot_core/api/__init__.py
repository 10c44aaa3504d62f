"""HTTP API: app factory, dependencies, routes, schemas and the error shape."""
