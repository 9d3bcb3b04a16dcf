"""The SNAP-ON tool registry (`SNAP_ON_TOOLBOX.yaml`): throttles, costs, back-off and kill
switches for the three tools this daemon implements.

The registry is shared by ~20 tools across several projects; we read only ours, picked by
`tool_id` (the YAML key is a display name that other teams rename freely), and ignore every other
tool and every field we do not use. What we do read is validated strictly: a limit that silently
became 0, a negative number or an unparsable window would either stop the prober or let it flood
mail servers, so the loader refuses the file and names the exact key instead (e.g.
`tools.SMTPCheck(TOOL-005).throttle.rate_limits[0].limit: must be a positive number, got -1`).
On SIGHUP the daemon keeps the old registry when the new one is refused.

The entries as read are `spec`; reading and validating the file is `loading`. Import from here.
"""

from ct_actors.toolbox.loading import load_toolbox
from ct_actors.toolbox.spec import (
    EMAIL_VERIFIER,
    MX_LOOKUP,
    SMTP_CHECK,
    Backoff,
    Cost,
    KillSwitch,
    RateLimit,
    Toolbox,
    ToolboxError,
    ToolSpec,
    parse_duration,
)

__all__ = [
    "EMAIL_VERIFIER",
    "MX_LOOKUP",
    "SMTP_CHECK",
    "Backoff",
    "Cost",
    "KillSwitch",
    "RateLimit",
    "ToolSpec",
    "Toolbox",
    "ToolboxError",
    "load_toolbox",
    "parse_duration",
]
