"""A simulated internet for tests, demos and benchmarks: DNS + SMTP on 127.0.0.0/8.

`world` holds the facts and the ground truth; `smtp_server` and `dns_server` play them on the
wire; `server` binds it all. For MockClock tests, `ct_actors.testing` plays the same world
without sockets (`SimConnector` over `smtp_server.handle_session`, `SimResolver`).
"""

from ct_actors.sim.stats import RcptEvent, SimStats
from ct_actors.sim.world import World
from ct_actors.sim.world_types import Behaviour, Expected, SimDomain, SimHost, local_part

__all__ = [
    "Behaviour",
    "Expected",
    "RcptEvent",
    "SimDomain",
    "SimHost",
    "SimStats",
    "World",
    "local_part",
]
