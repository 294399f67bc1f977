"""supervisord, woken by the signals it waits for (see __main__)."""
