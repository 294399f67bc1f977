"""The small library every service uses; it imports no service."""
