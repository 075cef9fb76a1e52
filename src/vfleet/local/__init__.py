"""The local supervisor: `vfleet up` on one machine."""
