"""Formats on disk: references, digests, manifests, the layout store, layers.

Nothing here touches the network or the command line.
"""
