"""ct-actors: actor-based MX/SMTP prober daemon for the Company Target IMO gate."""

__version__ = "0.1.0"
