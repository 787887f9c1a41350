"""The `spindle` command line: a client of the public thread API (spindle.v1)
for people and scripts, and `spindle up`, which runs both services."""
