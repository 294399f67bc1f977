"""The Celery worker: downloads and preset installs, as thin tasks over plain functions."""
