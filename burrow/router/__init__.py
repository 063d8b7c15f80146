"""``burrow proxy``: one endpoint in front of several queue servers.

Each queue lives on one server, chosen by two-step hashing (:mod:`burrow.hashing`); the
router sends a request for a queue to its server over pooled keep-alive connections
(:mod:`.upstream`), spreads account-wide and server-wide requests over the servers they
span and merges the answers (:mod:`.merge`), and places SQS requests by the queue they name
(:mod:`.sqs`). :mod:`.app` is the request handler, :mod:`.cli` the command. Routers keep no
state but which servers are up, so several can run side by side.
"""
