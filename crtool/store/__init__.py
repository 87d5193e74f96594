"""The one store: address lists, held messages with their bytes, challenges and events.

Repositories here never commit; the service or the CLI command owns the one transaction.
"""
