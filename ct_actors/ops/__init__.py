"""Operator commands: `ct-actors report` (monitoring figures from the database) and
`ct-actors canary` (a stratified canary through the real pipeline, validated and written up as
the canary report).

Layout: `queries` holds every SQL statement (explicit column lists; none names the spine's
sovereign_id column); `db` is the connection they run on; `selection`, `checks`, `report` and
`markdown` are pure (data in, figures or text out); `isolation` creates the restricted database
role the canary's pipeline runs under; `canary` and `commands` orchestrate.
"""
