"""The bench engineer's front end: embedded broker, live view, fault injection, sim runner."""
