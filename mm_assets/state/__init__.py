"""State two workers could race on, kept where every worker sees it (DESIGN.md "State").

When a database is configured (`MM_DELIVERY_LEDGER_URL`, the ledger's), the FileIdentifier
register, the build locks and the key-rotation lock with its last-rotation time are rows in
it, beside the ledger's receipts and quota use; without one they are files in the local
state folders, as on a laptop. Which one is chosen once, by `database.configured_url()`.
"""
