"""Linux backends and the pieces they share. Imported lazily: nothing here runs at import."""
