"""Everything that talks to a venue: wire protocol, feed, order gateway, simulator."""
