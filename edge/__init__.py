"""swapd: edge daemon for battery-swap stations."""
