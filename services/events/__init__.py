"""supervisord event listener: program lines to supervisord's stdout, state changes and crashes to the bus."""
