"""The sync engine: local calendars ↔ provider calendars, through server.providers only."""
