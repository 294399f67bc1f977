"""The prologue every service's `main()` runs: logging, Settings read once, `LOG_LEVEL` applied.

A setting the environment gets wrong ends the process with exit code 2 and one line naming it, before
anything starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from services.common.logs import setup_logging
from services.common.settings import Settings, SettingsError, load_settings

# Exit code of a service whose settings are wrong (supervisord shows it; Docker's HEALTHCHECK never sees it).
BAD_SETTINGS = 2


def start(service: str) -> Settings:
    """Set up logging for `service`, read the Settings, apply their log level; exit 2 on bad settings."""
    log = setup_logging(service)
    try:
        settings = load_settings()
    except SettingsError as exc:
        log.error("%s", exc)
        sys.exit(BAD_SETTINGS)
    logging.getLogger().setLevel(settings.log_level)
    log.debug("%s: settings read, log level %s", service, settings.log_level)
    return settings


Options = Callable[[argparse.ArgumentParser], None]


def arguments(
    module: str, doc: str | None, argv: list[str] | None = None, options: Options | None = None
) -> argparse.Namespace:
    """Every service answers `--help` (its usage, exit 0) and refuses an argument it does not take
    (usage, exit 2) before it reads a setting or opens a socket: a person exploring gets help, not a
    second worker on the live stack's queue. `options` adds the few a service takes."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if options is not None:
        options(parser)
    return parser.parse_args(argv)
