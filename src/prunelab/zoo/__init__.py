"""Named models and data sources: fetched from a package registry, converted once, cached."""
