"""Tickets (name -> bool mask + metadata), pruning strategies, mask distances, import/export."""
