"""The dashboard: a Flask app (API under /api, pages) served by gunicorn with threads."""
