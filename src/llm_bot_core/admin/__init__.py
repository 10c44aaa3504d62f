"""The Directus admin panel over the backend's database: install, run, provision."""
