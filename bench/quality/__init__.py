"""The quality harness: variant files (``variants/<table>/<name>.yaml``) run by ``python -m bench.quality.run``."""
