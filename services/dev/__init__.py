"""dev: the whole system on one machine without Docker, started and stopped by one command."""
