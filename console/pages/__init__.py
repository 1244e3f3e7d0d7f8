"""The console's pages, one per navigation entry."""
