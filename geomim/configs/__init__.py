"""The shipped training configs (YAML), read by `geomim.train --config NAME`."""
