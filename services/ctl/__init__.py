"""`python -m services.ctl`: supervisorctl for the running stack, with its paths resolved from Settings."""
