"""Hardware drivers: protocols, never the station."""
