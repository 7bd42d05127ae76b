"""fastalloc-shmd: the daemon that owns long-lived pools, repairs after dead clients and exports metrics.

Import name `fastalloc_shmd` (the folder is `daemon/`; the name `daemon`
belongs to PyPI's python-daemon). Run it with `fastalloc-shmd` or
`python -m fastalloc_shmd`; talk to it with `fastalloc_shm.client.DaemonClient`.
"""
