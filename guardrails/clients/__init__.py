"""The edge: one client per outside service (HTTP plumbing, tokens, Dataverse, Graph, ...).

Clients are built once per process, immutable afterwards, and passed into the executor; nothing
in the pure core (values, message, mailbox, engine, policy) imports from here.
"""
