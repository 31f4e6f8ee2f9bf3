"""Images: references, the store, layers, archives and base-image recipes."""
