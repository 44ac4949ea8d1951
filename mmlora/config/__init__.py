"""Recipes: the YAML schema (schema.py), how files and `key=value` overrides become a checked
`Recipe` (loading.py, values.py, overrides.py, keys.py), and where shipped recipes and assets
live (paths.py). The first stage of the data flow: every other stage reads a `Recipe`."""
