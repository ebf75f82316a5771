"""Everything over the network: transport, auth, credentials, the client.

Prints nothing; reports progress through callbacks.
"""
