"""Qt item models of the console's tables (each over an immutable snapshot built off the GUI thread)."""
