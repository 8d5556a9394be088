"""Independent pure-Python reference implementations used as test oracles."""
